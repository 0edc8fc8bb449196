"""`kmodel validate`: check model specs, env specs and composition configs, every problem of
a file at once (its fields, its name and entry file, the env it names); a composition also
as `kmodel run` checks it before it starts (its models, envs, weights and data)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kmodel.errors import KmodelError, SpecError
from kmodel.loader import load_env_spec, load_model_spec, raw_mapping
from kmodel.plan import load_plan
from kmodel.registry import SPEC_FILE, Registry


@dataclass(frozen=True)
class Validation:
    """One file checked: ok, or every problem found in it (the first is the main one)."""

    path: Path
    errors: list[KmodelError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        if self.ok:
            return {"path": str(self.path), "ok": True}
        first = self.errors[0]
        return {"path": str(self.path), "ok": False, "code": first.code, "error": str(first),
                "errors": [{"code": e.code, "error": str(e)} for e in self.errors]}


def default_targets(reg: Registry) -> list[Path]:
    """What `kmodel validate` checks when given nothing: every model and env kmodel finds,
    and the compositions in ./workflows/*.yaml."""
    envs = [p for n in reg.env_names() if (p := reg.env_spec_path(n)) is not None]
    return [*reg.model_paths().values(), *envs, *sorted(Path("workflows").glob("*.yaml"))]


def _check(reg: Registry, path: Path) -> None:
    if path.name == SPEC_FILE:
        reg.env(load_model_spec(path).env, referenced_by=str(path))
    elif path.parent.name == "envs" or path.parent in reg.env_path:
        load_env_spec(path)
    else:  # a composition: its fields, and what `kmodel run` checks before it starts
        load_plan(path, reg)


def _env_problem(reg: Registry, path: Path) -> list[KmodelError]:
    """A model spec whose fields are wrong may name an env that does not exist too."""
    env = (raw_mapping(path) or {}).get("env")
    if not isinstance(env, str):
        return []
    try:
        reg.env(env, referenced_by=str(path))
    except KmodelError as missing:
        return [missing]
    return []


def validate_file(reg: Registry, path: Path) -> Validation:
    """One spec file (or a model's folder) checked, with every problem it has."""
    path = path / SPEC_FILE if path.is_dir() else path
    try:
        _check(reg, path)
    except KmodelError as e:
        found = [e, *getattr(e, "more", [])]
        if path.name == SPEC_FILE and isinstance(e, SpecError):
            found += _env_problem(reg, path)
        return Validation(path, found)
    return Validation(path)


def validate(reg: Registry, paths: Sequence[Path] = ()) -> list[Validation]:
    """Each of ``paths`` (model.yaml files, model folders, envs/*.yaml, workflow configs)
    checked; by default ``default_targets``."""
    return [validate_file(reg, p) for p in (list(paths) or default_targets(reg))]


__all__ = ["Validation", "default_targets", "validate", "validate_file"]
