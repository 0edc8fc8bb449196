"""Spec formats: a model spec (model_specs/NAME/model.yaml), an env spec (envs/NAME.yaml,
pip or conda flavour) and a composition config (workflows/*.yaml).

The types here are plain frozen dataclasses, cheap to import and to build, with the checks
of a spec that depend on other files (its entry file exists, no path leaves its folder).
This module is a leaf: it imports only the error catalogue and the defaults. Documents are
validated by kmodel/_schema.py (pydantic) and loaded, with a cache, by kmodel/loader.py.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from kmodel import defaults
from kmodel.errors import FileAccessError, SpecError, UnsafePathError

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
SHA256_RE = r"^[0-9a-f]{64}$"
DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64",
          "uint8", "bool")
#: bounds for spec files: they are small, hand-written documents
MAX_SPEC_BYTES = 1 << 20
MAX_NODES = 100_000
MAX_DEPTH = 64

# --- model spec --------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ArraySpec:
    """One named input or output array; shape is per row (``[]`` = one scalar per row; an
    output's ``null`` shape: whatever the model's first batch gives, e.g. an ensembler's
    P(y=1) or its class probabilities). ``classes``: for an output of class probabilities,
    the class label of each column (default: the sorted labels, in order)."""

    name: str
    dtype: str = "float32"
    shape: list[int | None] | None = field(default_factory=list)
    doc: str = ""
    classes: list[int | float] | None = None


@dataclass(frozen=True, kw_only=True)
class WeightsSpec:
    """A folder holding params.json and weight files (one .npy per named weight, or native
    files: kmodel/weight_formats.py), each with its sha256."""

    path: str = "weights"
    sha256: dict[str, str]


@dataclass(frozen=True, kw_only=True)
class TrainSpec:
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class TestSpec:
    """`kmodel test`: run the model on ``inputs`` and compare with ``expected`` (files in the
    model's folder) within rtol/atol; ``weights``: a trained weights folder to use, for a
    model whose weights are trained by kmodel (an ensembler)."""

    __test__ = False  # not a pytest class
    inputs: str
    expected: str
    weights: str | None = None
    rtol: float = 1e-5
    atol: float = 1e-6


def _one(cls: Any, data: dict[str, Any] | None) -> Any:
    return None if data is None else cls(**data)


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    name: str
    version: str
    description: str = ""
    env: str
    entrypoint: str
    args: dict[str, Any] = field(default_factory=dict)
    weights: WeightsSpec | None = None
    train: TrainSpec | None = None
    inputs: list[ArraySpec]
    outputs: list[ArraySpec]
    test: TestSpec | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        return cls(**{**data, "inputs": [ArraySpec(**a) for a in data["inputs"]],
                      "outputs": [ArraySpec(**a) for a in data["outputs"]],
                      "weights": _one(WeightsSpec, data.get("weights")),
                      "train": _one(TrainSpec, data.get("train")),
                      "test": _one(TestSpec, data.get("test"))})

    @property
    def entry_file(self) -> str:
        return self.entrypoint.split(":")[0]


# --- env specs ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PipEnvSpec:
    """A uv (or stdlib venv) environment: a python version and pip requirements."""

    description: str = ""
    python: str
    pip: list[str] = field(default_factory=list)

    @property
    def kind(self) -> Literal["pip"]:
        return "pip"


@dataclass(frozen=True, kw_only=True)
class CondaEnvSpec:
    """A conda environment file: channels, dependencies (with an optional pip: section)."""

    name: str | None = None
    description: str = ""
    channels: list[str] = field(default_factory=lambda: ["conda-forge"])
    platforms: list[str] = field(default_factory=list)
    dependencies: list[str | dict[Literal["pip"], list[str]]]

    @property
    def kind(self) -> Literal["conda"]:
        return "conda"

    @property
    def conda_deps(self) -> list[str]:
        return [d for d in self.dependencies if isinstance(d, str)]

    @property
    def pip_deps(self) -> list[str]:
        return [p for d in self.dependencies if isinstance(d, dict) for p in d.get("pip", [])]


def env_kind(data: Any) -> Literal["pip", "conda"]:
    """Which flavour an env document is: conda if it names dependencies or channels."""
    if isinstance(data, dict):
        return "conda" if "dependencies" in data or "channels" in data else "pip"
    return "conda" if hasattr(data, "dependencies") else "pip"


def env_from_dict(data: dict[str, Any]) -> PipEnvSpec | CondaEnvSpec:
    return CondaEnvSpec(**data) if env_kind(data) == "conda" else PipEnvSpec(**data)


# --- composition config ------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Train and test input files, or a dataset kmodel can generate (``builtin``); ``blend``:
    rows the base models never saw, to fit the ensembler on (``stacking: holdout``)."""

    builtin: Literal["breast_cancer"] | None = None
    seed: int = defaults.SEED
    test_fraction: float = defaults.TEST_FRACTION
    train: str | None = None
    test: str | None = None
    blend: str | None = None


Method = Literal["cv", "holdout", "in-sample"]


@dataclass(frozen=True, kw_only=True)
class StackingConfig:
    """How the ensembler's training rows are kept apart from the base models' (``method``):
    ``cv`` fits every base model once per fold and trains the ensembler on out-of-fold
    predictions (the default when every base model is trainable); ``holdout`` trains it on
    ``data: blend`` rows; ``in-sample`` on the rows the base models were trained on (every
    score is then flagged)."""

    method: Method | None = None
    folds: int = defaults.FOLDS
    seed: int = defaults.SEED


@dataclass(frozen=True, kw_only=True)
class ComposeConfig:
    """A composition: base models, an ensembler, data, and where models and envs live.

    ``specs`` (folders of model folders) and ``envs`` (a folder of env specs) are relative to
    the working directory; without them KMODEL_PATH / ./model_specs and KMODEL_ENVS / ./envs
    are used. ``shards`` splits every model's predictions (an int) or some models' (a
    mapping) into that many jobs, merged afterwards.
    """

    name: str
    results: str = defaults.RESULTS
    specs: list[str] = field(default_factory=list)
    envs: str | None = None
    data: DataConfig
    targets: str = defaults.TARGET_NAME
    models: list[str]
    ensembler: str
    batch_size: int = defaults.BATCH_SIZE
    shards: int | dict[str, int] = 1
    task: Literal["binary", "multiclass", "regression"] | None = None
    stacking: StackingConfig = field(default_factory=StackingConfig)
    #: the prediction dataset to ensemble, by model (needed for models with several)
    outputs: dict[str, str] = field(default_factory=dict)
    #: input datasets of the data files that also go to the ensembler, as they are
    passthrough: list[str] = field(default_factory=list)
    #: models fed by other models: {model: {input: SOURCE or [SOURCE, ...]}}, a SOURCE
    #: being ``data.DATASET`` (the data files' /inputs) or ``MODEL.OUTPUT`` (a prediction);
    #: several sources are put side by side (columns) in one input
    inputs: dict[str, dict[str, str | list[str]]] = field(default_factory=dict)

    def sources_of(self, model: str) -> dict[str, list[str]]:
        """A model's inputs, each as its list of sources (empty: it reads the data)."""
        return {name: [src] if isinstance(src, str) else list(src)
                for name, src in self.inputs.get(model, {}).items()}

    def upstream_of(self, model: str) -> list[str]:
        """The models whose predictions feed ``model``."""
        return sorted({src.split(".")[0] for srcs in self.sources_of(model).values()
                       for src in srcs if not src.startswith("data.")})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ComposeConfig:
        return cls(**{**data, "data": DataConfig(**data["data"]),
                      "stacking": StackingConfig(**data.get("stacking") or {})})

    def shards_of(self, model: str) -> int:
        if isinstance(self.shards, int):
            return self.shards
        return self.shards.get(model, 1)


# --- reading and checking files -------------------------------------------------


def read_text(path: Path) -> str:
    """The file's text: a regular file of at most MAX_SPEC_BYTES (never blocks on a FIFO)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SpecError(path, "file not found", fix="check the path") from None
    except OSError as e:
        raise SpecError(path, f"cannot read: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise SpecError(path, "is a folder, not a YAML file", fix="give the spec file")
    if not stat.S_ISREG(st.st_mode):
        raise SpecError(path, "is not a regular file (a FIFO or a device?)",
                        fix="give a YAML file")
    if st.st_size > MAX_SPEC_BYTES:
        raise SpecError(path, f"is {st.st_size} bytes; spec files are at most "
                        f"{MAX_SPEC_BYTES} bytes", fix="give the YAML spec, not a data file")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)
        return data.decode("utf-8")
    except PermissionError as e:
        raise FileAccessError(f"{path}: cannot be read ({e.strerror or e}); check its "
                              "permissions") from None
    except UnicodeDecodeError as e:
        raise SpecError(path, f"is not UTF-8 text (byte {e.start})",
                        fix="save it as UTF-8 YAML") from None
    except OSError as e:
        raise SpecError(path, f"cannot read: {e.strerror or e}") from None


def file_problems(path: Path, data: dict[str, Any]) -> list[SpecError]:
    """What is wrong with a model spec's name and entry file, from the raw values."""
    folder, found = path.parent, []
    name, entry = data.get("name"), data.get("entrypoint")
    if path.name == "model.yaml" and isinstance(name, str) and name != folder.name:
        found.append(SpecError(path, f"name {name!r} differs from its folder {folder.name!r}",
                               field="name", fix=f"write name: {folder.name}"))
    if isinstance(entry, str) and entry.count(":") == 1:
        file = entry.split(":")[0]
        try:
            if not check_inside(folder, file, path, "entrypoint").is_file():
                found.append(SpecError(path, f"{file} does not exist in {folder}",
                                       field="entrypoint", fix="write file.py:function naming "
                                       "a file in the model's folder"))
        except SpecError as e:
            found.append(e)
    return found


def check_model_paths(spec: ModelSpec, path: Path) -> None:
    """The checks of a model spec that depend on other files: its name is its folder's, its
    entry file exists, and no path leaves the folder (every problem at once)."""
    folder = path.parent
    if problems := file_problems(path, {"name": spec.name, "entrypoint": spec.entrypoint}):
        first, *rest = problems
        first.more += rest
        raise first
    if spec.weights:
        check_inside(folder, spec.weights.path, path, "weights.path")
        for name in spec.weights.sha256:
            check_inside(folder, f"{spec.weights.path}/{name}", path, f"weights.sha256.{name}")
    if spec.test:
        check_inside(folder, spec.test.inputs, path, "test.inputs")
        check_inside(folder, spec.test.expected, path, "test.expected")
        if spec.test.weights:
            check_inside(folder, spec.test.weights, path, "test.weights")


def check_inside(folder: Path, rel: str, spec_path: Path, field: str) -> Path:
    """Resolve ``rel`` against ``folder``; refuse absolute paths, '..' and symlink escapes."""
    p = PurePosixPath(rel)
    if p.is_absolute() or re.match(r"^[A-Za-z]:", rel) or ".." in p.parts:
        raise UnsafePathError(spec_path, f"path {rel!r} leaves the model folder", field=field,
                              fix="use a relative path inside the model's folder")
    full = folder / rel
    current = folder
    for part in p.parts:  # only a symlink inside the folder can lead out of it
        current = current / part
        try:
            if not stat.S_ISLNK(os.lstat(current).st_mode):
                continue
        except OSError:
            break  # does not exist (yet): nothing to follow
        if full.exists() and not Path(os.path.realpath(full)).is_relative_to(
                os.path.realpath(folder)):
            raise UnsafePathError(spec_path, f"path {rel!r} is a symlink leading outside "
                                  f"{folder}", field=field, fix="copy the file into the folder")
        break
    return full
