"""Finds model specs and env specs.

Model specs live in ``<dir>/<name>/model.yaml`` for every dir in ``--specs``, then
``KMODEL_PATH`` (os.pathsep separated), then ``./model_specs``. Env specs live in
``./envs`` (or ``KMODEL_ENVS``) as ``<name>.yaml``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from kmodel.errors import UnknownEnvError, UnknownModelError
from kmodel.spec import NAME_RE, CondaEnvSpec, ModelSpec, PipEnvSpec, load_env_spec, load_model_spec

SPEC_FILE = "model.yaml"


@dataclass(frozen=True)
class Model:
    """A loaded model spec and the folder it lives in."""

    spec: ModelSpec
    path: Path  # the model.yaml

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def weights_dir(self) -> Path | None:
        return self.folder / self.spec.weights.path if self.spec.weights else None


@dataclass(frozen=True)
class EnvRef:
    """An env spec file, its parsed content and the lockfile that belongs next to it."""

    name: str
    path: Path
    spec: PipEnvSpec | CondaEnvSpec

    @property
    def lockfile(self) -> Path:
        suffix = ".conda-lock.yml" if self.spec.kind == "conda" else ".lock"
        return self.path.with_name(self.name + suffix)


@dataclass
class Registry:
    specs: list[Path] = field(default_factory=list)
    envs_dir: Path | None = None

    @cached_property
    def spec_dirs(self) -> list[Path]:
        dirs = list(self.specs)
        dirs += [Path(p) for p in os.environ.get("KMODEL_PATH", "").split(os.pathsep) if p]
        dirs.append(Path("model_specs"))
        seen: list[Path] = []
        for d in dirs:
            if d.is_dir() and d.resolve() not in [s.resolve() for s in seen]:
                seen.append(d)
        return seen

    @cached_property
    def env_dir(self) -> Path:
        return self.envs_dir or Path(os.environ.get("KMODEL_ENVS", "envs"))

    def model_paths(self) -> dict[str, Path]:
        """Model name (its folder's name) -> model.yaml; the first spec dir wins."""
        found: dict[str, Path] = {}
        for d in self.spec_dirs:
            for p in sorted(d.glob(f"*/{SPEC_FILE}")):
                found.setdefault(p.parent.name, p)
        return found

    def model(self, name: str) -> Model:
        paths = self.model_paths()
        if name not in paths:
            raise UnknownModelError(name, self.spec_dirs or [Path("model_specs")], sorted(paths))
        return Model(load_model_spec(paths[name]), paths[name])

    def models(self) -> list[Model]:
        return [self.model(n) for n in self.model_paths()]

    def env_names(self) -> list[str]:
        if not self.env_dir.is_dir():
            return []
        return sorted(p.stem for p in self.env_dir.glob("*.yaml") if re.match(NAME_RE, p.stem))

    def env(self, name: str, referenced_by: str | None = None) -> EnvRef:
        if not re.match(NAME_RE, name) or "/" in name:
            raise UnknownEnvError(name, self.env_dir, self.env_names(), referenced_by)
        path = self.env_dir / f"{name}.yaml"
        if not path.is_file():
            raise UnknownEnvError(name, self.env_dir, self.env_names(), referenced_by)
        return EnvRef(name, path, load_env_spec(path))

    def env_of(self, model: Model) -> EnvRef:
        return self.env(model.spec.env, referenced_by=str(model.path))
