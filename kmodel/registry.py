"""Finds model specs and env specs.

Model specs live in ``<dir>/<name>/model.yaml`` for every dir in ``--specs``, then
``KMODEL_PATH`` (os.pathsep separated), then ``./model_specs``. Env specs live in
``./envs`` (or ``KMODEL_ENVS``) as ``<name>.yaml``.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from pydantic import ValidationError

from kmodel import __version__
from kmodel._fs import atomic_write_text, kmodel_home, sha256_bytes
from kmodel.errors import UnknownEnvError, UnknownModelError
from kmodel.spec import (
    NAME_RE,
    CondaEnvSpec,
    ModelSpec,
    PipEnvSpec,
    check_model_paths,
    load_env_spec,
    load_model_spec,
)

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


def _load(path: Path) -> ModelSpec:
    """A model spec, validated once per version of its file: the result is cached in
    KMODEL_HOME by the file's identity (size, mtime, ctime, inode) and kmodel's version. A
    workflow of 1,000 models parses 1,000 specs in every process that reads it."""
    try:
        st = os.stat(path)
    except OSError:
        return load_model_spec(path)  # says what is wrong
    key = (f"{__version__}|{path.name}|{st.st_dev}|{st.st_ino}|{st.st_size}|"
           f"{st.st_mtime_ns}|{st.st_ctime_ns}")
    entry = kmodel_home() / "spec-cache" / f"{sha256_bytes(key.encode())[:32]}.json"
    try:
        spec = ModelSpec.model_validate_json(entry.read_bytes())
    except (OSError, ValidationError):
        spec = load_model_spec(path)
        with contextlib.suppress(Exception):  # a read-only home only costs speed
            atomic_write_text(entry, spec.model_dump_json())
    else:
        check_model_paths(spec, path)
    return spec


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
        return dict(self._model_paths)

    @cached_property
    def _model_paths(self) -> dict[str, Path]:
        # a Registry lives for one command or one workflow parse: look the folders up once
        found: dict[str, Path] = {}
        for d in self.spec_dirs:
            for p in sorted(d.glob(f"*/{SPEC_FILE}")):
                found.setdefault(p.parent.name, p)
        return found

    def model(self, name: str) -> Model:
        if name in self._models:
            return self._models[name]
        paths = self._model_paths
        if name not in paths:
            raise UnknownModelError(name, self.spec_dirs or [Path("model_specs")], sorted(paths))
        model = self._models[name] = Model(_load(paths[name]), paths[name])
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
        if self.env_dir.is_dir():
            found += [p for p in self.env_dir.iterdir()
                      if p.name.endswith((".yaml", ".yml", ".lock"))]
        return found

    def env_names(self) -> list[str]:
        if not self.env_dir.is_dir():
            return []
        return sorted(p.stem for p in self.env_dir.glob("*.yaml") if re.match(NAME_RE, p.stem))

    def env(self, name: str, referenced_by: str | None = None) -> EnvRef:
        if name in self._envs:
            return self._envs[name]
        if not re.match(NAME_RE, name) or "/" in name:
            raise UnknownEnvError(name, self.env_dir, self.env_names(), referenced_by)
        path = self.env_dir / f"{name}.yaml"
        if not path.is_file():
            raise UnknownEnvError(name, self.env_dir, self.env_names(), referenced_by)
        ref = self._envs[name] = EnvRef(name, path, load_env_spec(path))
        return ref

    @cached_property
    def _envs(self) -> dict[str, EnvRef]:
        return {}

    def env_of(self, model: Model) -> EnvRef:
        return self.env(model.spec.env, referenced_by=str(model.path))
