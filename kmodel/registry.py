"""Finds model specs and env specs.

Model specs live in ``<dir>/<name>/model.yaml`` for every dir in ``--specs``, then
``KMODEL_PATH`` (os.pathsep separated), then ``./model_specs``. Env specs live as
``<name>.yaml`` in the folders of ``--envs``, else of ``KMODEL_ENVS`` (os.pathsep separated),
else in ``./envs``: the first folder that holds ``<name>.yaml`` wins.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Generic, TypeVar

from kmodel.errors import UnknownEnvError, UnknownModelError, UsageError
from kmodel.loader import load_env_spec, load_model_spec
from kmodel.spec import NAME_RE, CondaEnvSpec, ModelSpec, PipEnvSpec

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


#: an env spec's type: a backend takes refs of the one it builds (kmodel/envs/)
S = TypeVar("S", bound=PipEnvSpec | CondaEnvSpec)


@dataclass(frozen=True)
class EnvRef(Generic[S]):
    """An env spec file, its parsed content and the lockfile that belongs next to it."""

    name: str
    path: Path
    spec: S

    @property
    def lockfile(self) -> Path:
        suffix = ".conda-lock.yml" if self.spec.kind == "conda" else ".lock"
        return self.path.with_name(self.name + suffix)


ENVS = "envs"  # a spec folder's own env specs


@dataclass
class Registry:
    specs: list[Path] = field(default_factory=list)
    #: folders of env specs, first wins (empty: KMODEL_ENVS's, else ./envs)
    envs: Sequence[Path] | Path = ()

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
    def env_path(self) -> list[Path]:
        """The env folders asked for, in order: ``envs``, else KMODEL_ENVS, else ./envs."""
        if isinstance(self.envs, (str, Path)):  # one folder (or an os.pathsep list)
            return [Path(p) for p in str(self.envs).split(os.pathsep) if p] or [Path(ENVS)]
        if self.envs:
            return [Path(p) for p in self.envs]
        listed = [Path(p) for p in os.environ.get("KMODEL_ENVS", "").split(os.pathsep) if p]
        return listed or [Path(ENVS)]

    @property
    def env_dir(self) -> Path:
        """The first env folder: where `kmodel init --new-env` writes an env spec."""
        return self.env_path[0]

    def model_paths(self) -> dict[str, Path]:
        """Model name (its folder's name) -> model.yaml; the first spec dir wins."""
        return dict(self._model_paths)

    @cached_property
    def _model_paths(self) -> dict[str, Path]:
        # a Registry lives for one command or one workflow parse: look the folders up once
        found: dict[str, Path] = {}
        for d in self.spec_dirs:
            for p in sorted(d.glob(f"*/{SPEC_FILE}")):
                if p.parent.name == ENVS:
                    continue  # a root's env specs, not a model
                if p.parent.name in found:
                    self.hidden.append((p, found[p.parent.name]))
                else:
                    found[p.parent.name] = p
        return found

    @cached_property
    def hidden(self) -> list[tuple[Path, Path]]:
        """(spec, the spec of the same name that hides it): names that clash on the path."""
        return []

    def model(self, name: str) -> Model:
        if name in self._models:
            return self._models[name]
        paths = self._model_paths
        if name not in paths:
            raise UnknownModelError(name, self.spec_dirs or [Path("model_specs")], sorted(paths))
        model = self._models[name] = Model(load_model_spec(paths[name]), paths[name])
        return model

    @cached_property
    def _models(self) -> dict[str, Model]:
        return {}

    def models(self) -> list[Model]:
        return [self.model(n) for n in self.model_paths()]

    def owned_files(self) -> list[Path]:
        """The spec, env spec and lock files kmodel reads: no command writes over them
        (only `kmodel hash --write` and `kmodel env lock`, on purpose)."""
        found = list(self._model_paths.values())
        for d in self.env_dirs:
            found += [p for p in d.iterdir() if p.name.endswith((".yaml", ".yml", ".lock"))]
        return found

    @cached_property
    def env_dirs(self) -> list[Path]:
        """Where env specs are: the env folders (--envs, KMODEL_ENVS, ./envs), then the
        ``envs/`` folder of each spec folder on the search path that has one."""
        dirs = [*self.env_path] + [d / ENVS for d in self.spec_dirs]
        seen: list[Path] = []
        for d in dirs:
            if d.is_dir() and d.resolve() not in [s.resolve() for s in seen]:
                seen.append(d)
        return seen

    def env_names(self) -> list[str]:
        return sorted({p.stem for d in self.env_dirs for p in d.glob("*.yaml")
                       if re.match(NAME_RE, p.stem)})

    def env(self, name: str, referenced_by: str | None = None,
            first: Path | None = None) -> EnvRef[Any]:
        """The env spec ``name``: in ``first`` (a model's own root's envs/) if it is there,
        else in the first of ``env_dirs`` that has it."""
        if not re.match(NAME_RE, name) or "/" in name:
            raise UnknownEnvError(name, self.env_path, self.env_names(), referenced_by)
        path = self.env_spec_path(name, first)
        if path is None:
            raise UnknownEnvError(name, self.env_path, self.env_names(), referenced_by)
        key = str(path.absolute())
        if key not in self._envs:
            self._envs[key] = EnvRef(name, path, load_env_spec(path))
        return self._envs[key]

    def env_spec_path(self, name: str, first: Path | None = None) -> Path | None:
        """The file of env spec ``name`` (read nothing): in ``first`` if there, else in the
        first of ``env_dirs`` that has it; None if none has."""
        for d in [*([first] if first is not None else []), *self.env_dirs]:
            if (path := d / f"{name}.yaml").is_file():
                return path
        return None

    @cached_property
    def _envs(self) -> dict[str, EnvRef[Any]]:
        return {}

    def env_refs(self, names: Sequence[str] = (), *, every: bool = False) -> list[EnvRef[Any]]:
        """The envs named (by env name, or by the name of a model that uses one), or with
        ``every`` each env in the env folders."""
        if every == bool(names):
            raise UsageError("give env or model names, or --all (not both)")
        if every:
            return [self.env(n) for n in self.env_names()]
        refs = []
        for name in names:
            if any((d / f"{name}.yaml").is_file() for d in self.env_path) \
                    or name not in self._model_paths:
                refs.append(self.env(name))
            else:
                refs.append(self.env_of(self.model(name)))
        return refs

    def env_of(self, model: Model) -> EnvRef[Any]:
        """A model's env: looked up in its own root's envs/ first (a folder on the search
        path carries its models' envs), then as ``env`` does."""
        return self.env(model.spec.env, referenced_by=str(model.path),
                        first=model.folder.parent / ENVS)
