"""The validators of kmodel's spec documents: safe YAML reading and pydantic models (strict,
no unknown keys) whose errors become ``file:line: field: problem; fix``.

Imported only when kmodel meets a document's content for the first time (kmodel/loader.py
caches what validates); the types the rest of kmodel uses are kmodel/spec.py's dataclasses,
which mirror the models here field for field (a test checks that they agree).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from kmodel import defaults, weight_formats
from kmodel.errors import SpecError, YamlSyntaxError
from kmodel.spec import (
    DTYPES,
    MAX_DEPTH,
    MAX_NODES,
    NAME_RE,
    SHA256_RE,
    env_kind,
    file_problems,
    read_text,
)


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, defer_build=True)


# --- model spec --------------------------------------------------------------------


class ArraySpec(StrictModel):
    """One named input or output array; shape is per row (``[]`` = one scalar per row; an
    output's ``null`` shape: whatever the model's first batch gives, e.g. an ensembler's
    P(y=1) or its class probabilities). ``classes``: for an output of class probabilities,
    the class label of each column (default: the sorted labels, in order)."""

    name: Annotated[str, Field(pattern=NAME_RE)]
    dtype: Literal[DTYPES] = "float32"  # type: ignore[valid-type]
    shape: Annotated[list[Annotated[int, Field(ge=1)] | None], Field(max_length=16)] | None = []
    doc: str = ""
    classes: Annotated[list[int | float], Field(min_length=2)] | None = None

    @model_validator(mode="after")
    def _classes_fit(self) -> ArraySpec:
        if self.classes is not None:
            if len(set(self.classes)) != len(self.classes):
                raise ValueError(f"classes of {self.name!r} must be unique, got {self.classes}")
            if self.shape is not None and self.shape != [len(self.classes)]:
                raise ValueError(f"{self.name!r} lists {len(self.classes)} classes, so its "
                                 f"shape is [{len(self.classes)}], not {self.shape}")
        return self


class WeightsSpec(StrictModel):
    """A folder holding params.json and weight files (one .npy per named weight, or native
    files: kmodel/weight_formats.py), each with its sha256."""

    path: str = "weights"
    sha256: dict[str, Annotated[str, Field(pattern=SHA256_RE)]]

    @field_validator("sha256")
    @classmethod
    def _has_params(cls, v: dict[str, str]) -> dict[str, str]:
        if v and "params.json" not in v:  # {}: not hashed yet (`kmodel hash MODEL --write`)
            raise ValueError("must list params.json; run `kmodel hash MODEL --write`")
        for name in v:
            if "/" in name or "\\" in name:
                raise ValueError(f"{name!r}: weight files lie in the weights folder itself "
                                 "(no subfolders); move the file up and run `kmodel hash "
                                 "MODEL --write`")
            if name == "hashes.json" or (why := weight_formats.name_problem(name)):
                raise ValueError(f"{name!r}: {why or 'a manifest kmodel keeps, not a weight'}")
        return v


def _json_value(value: Any, where: str) -> None:
    """Args travel to the model's env as JSON: refuse what JSON cannot carry (dates, sets...)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{where}: key {k!r} is not a string, which args cannot "
                                 "hold (they are passed as JSON); quote it")
            _json_value(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _json_value(v, f"{where}.{i}")
    elif value is not None and not isinstance(value, (bool, int, float, str)):
        kind = "a YAML date" if hasattr(value, "isoformat") else type(value).__name__
        raise ValueError(f"{where!r} is {kind}, which args cannot hold (they are passed as "
                         "JSON); quote it to pass a string")


def _json_args(value: dict[str, Any]) -> dict[str, Any]:
    for k, v in value.items():
        _json_value(v, k)
    return value


JsonArgs = Annotated[dict[str, Any], AfterValidator(_json_args)]


class TrainSpec(StrictModel):
    args: JsonArgs = {}


class TestSpec(StrictModel):
    """`kmodel test`: run the model on ``inputs`` and compare with ``expected`` (files in the
    model's folder) within rtol/atol; ``weights``: a trained weights folder to use, for a
    model whose weights are trained by kmodel (an ensembler)."""

    inputs: str
    expected: str
    weights: str | None = None
    rtol: Annotated[float, Field(ge=0)] = 1e-5
    atol: Annotated[float, Field(ge=0)] = 1e-6


class ResourcesSpec(StrictModel):
    """What one job of the model needs: CPU threads (its Snakemake threads, SLURM's
    cpus-per-task, the BLAS and OpenMP threads of its runner), memory in MB and GPUs."""

    threads: Annotated[int, Field(ge=1, le=4096)] | None = None
    mem_mb: Annotated[int, Field(ge=1)] | None = None
    gpus: Annotated[int, Field(ge=0, le=64)] | None = None


class ModelSpec(StrictModel):
    name: Annotated[str, Field(pattern=NAME_RE)]
    version: str
    description: str = ""
    env: Annotated[str, Field(pattern=NAME_RE)]
    entrypoint: Annotated[str, Field(pattern=r"^[^:]+\.py:[A-Za-z_][A-Za-z0-9_]*$")]
    args: JsonArgs = {}
    weights: WeightsSpec | None = None
    train: TrainSpec | None = None
    inputs: Annotated[list[ArraySpec], Field(min_length=1)]
    outputs: Annotated[list[ArraySpec], Field(min_length=1)]
    test: TestSpec | None = None
    resources: ResourcesSpec | None = None
    device: Literal["cpu", "cuda", "auto"] | None = None

    @model_validator(mode="after")
    def _unique_names(self) -> ModelSpec:
        for kind in ("inputs", "outputs"):
            names = [a.name for a in getattr(self, kind)]
            if len(set(names)) != len(names):
                raise ValueError(f"{kind} names must be unique, got {names}")
        for out in self.outputs:
            if out.shape is not None and None in out.shape:
                raise ValueError(f"output {out.name!r} has shape {out.shape}: outputs are "
                                 "stored in fixed-size rows, so give every dimension (or "
                                 "shape: null, set by the model's first batch)")
        for inp in self.inputs:
            if inp.shape is None:
                raise ValueError(f"input {inp.name!r} has shape null; give its shape per "
                                 "row ([] for a scalar, [null] for any length)")
        return self


# --- env specs ---------------------------------------------------------------------


class PipEnvSpec(StrictModel):
    """A uv (or stdlib venv) environment: a python version and pip requirements."""

    description: str = ""
    python: Annotated[str, Field(pattern=r"^3\.\d+$")]
    pip: list[str] = []


class CondaEnvSpec(StrictModel):
    """A conda environment file: channels, dependencies (with an optional pip: section)."""

    name: str | None = None
    description: str = ""
    channels: list[str] = ["conda-forge"]
    platforms: list[str] = []
    dependencies: list[str | dict[Literal["pip"], list[str]]]


EnvSpec = Annotated[
    Annotated[PipEnvSpec, Tag("pip")] | Annotated[CondaEnvSpec, Tag("conda")],
    Discriminator(env_kind),
]


class _EnvDoc(StrictModel):
    env: EnvSpec


# --- composition config ------------------------------------------------------------


def _plain_path(value: str) -> str:
    """A path Snakemake can use as is: no wildcard braces, no control characters."""
    if not value.strip():
        raise ValueError("must not be empty")
    if bad := sorted({c for c in value if c in "{}" or ord(c) < 32 or c == "\x7f"}):
        raise ValueError(f"contains {', '.join(map(repr, bad))}, which a workflow path cannot "
                         "hold; rename the folder")
    return value


PlainPath = Annotated[str, AfterValidator(_plain_path)]


class DataConfig(StrictModel):
    """Train and test input files, or a dataset kmodel can generate (``builtin``); ``blend``:
    rows the base models never saw, to fit the ensembler on (``stacking: holdout``)."""

    builtin: Literal["breast_cancer"] | None = None
    seed: int = defaults.SEED
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = defaults.TEST_FRACTION
    train: PlainPath | None = None
    test: PlainPath | None = None
    blend: PlainPath | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if self.builtin is None and not (self.test and (self.train or self.blend)):
            raise ValueError("give either builtin: breast_cancer, or a test: path with a "
                             "train: path (or a blend: path for stacking: holdout)")
        if self.builtin is not None and (self.train or self.test or self.blend):
            raise ValueError("give either builtin: or data files (train:, test:, blend:), "
                             "not both")
        return self


class StackingConfig(StrictModel):
    """How the ensembler's training rows are kept apart from the base models' (``method``):
    ``cv`` fits every base model once per fold and trains the ensembler on out-of-fold
    predictions (the default when every base model is trainable); ``holdout`` trains it on
    ``data: blend`` rows; ``in-sample`` on the rows the base models were trained on (every
    score is then flagged)."""

    method: Literal["cv", "holdout", "in-sample"] | None = None
    folds: Annotated[int, Field(ge=2, le=100)] = defaults.FOLDS
    seed: Annotated[int, Field(ge=0, lt=2**32)] = defaults.SEED


Count = Annotated[int, Field(ge=1, le=10_000)]
Name = Annotated[str, Field(pattern=NAME_RE)]
#: where a model's input comes from: data.DATASET or MODEL.OUTPUT
Source = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*\.[A-Za-z0-9][A-Za-z0-9_.-]*$")]


class ComposeConfig(StrictModel):
    """A composition: base models, an ensembler, data, and where models and envs live.

    ``specs`` (folders of model folders) and ``envs`` (a folder of env specs) are relative to
    the working directory; without them KMODEL_PATH / ./model_specs and KMODEL_ENVS / ./envs
    are used. ``shards`` splits every model's predictions (an int) or some models' (a
    mapping) into that many jobs, merged afterwards.
    """

    name: Annotated[str, Field(pattern=NAME_RE)]
    results: PlainPath = defaults.RESULTS
    specs: list[PlainPath] = []
    envs: PlainPath | None = None
    data: DataConfig
    targets: Annotated[str, Field(pattern=NAME_RE)] = defaults.TARGET_NAME
    models: Annotated[list[Annotated[str, Field(pattern=NAME_RE)]], Field(min_length=1)]
    ensembler: Annotated[str, Field(pattern=NAME_RE)]
    batch_size: Annotated[int, Field(gt=0)] = defaults.BATCH_SIZE
    shards: Count | dict[str, Count] = 1
    task: Literal["binary", "multiclass", "regression"] | None = None
    stacking: StackingConfig = StackingConfig()
    outputs: dict[Name, Name] = {}
    passthrough: list[Name] = []
    inputs: dict[Name, dict[Name, Source | Annotated[list[Source], Field(min_length=1)]]] = {}
    resources: dict[Name, ResourcesSpec] = {}

    @field_validator("models")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"models must be unique, got {v}")
        return v

    @model_validator(mode="after")
    def _names_are_models(self) -> ComposeConfig:
        for key in ("shards", "outputs"):
            given = getattr(self, key)
            if isinstance(given, dict) and (unknown := sorted(set(given) - set(self.models))):
                raise ValueError(f"{key} names {unknown}, which are not in models "
                                 f"{self.models}")
        if unknown := sorted(set(self.resources) - {*self.models, self.ensembler}):
            raise ValueError(f"resources names {unknown}, which are not in models "
                             f"{self.models} nor the ensembler {self.ensembler!r}")
        if self.ensembler in self.models:
            raise ValueError(f"the ensembler {self.ensembler!r} is also listed in models; an "
                             "ensembler takes the base models' predictions, so list it once, "
                             "as ensembler")
        self._check_graph()
        return self

    def _check_graph(self) -> None:
        """``inputs`` names models of the composition, fed by data or by other models of
        it, without a cycle."""
        if unknown := sorted(set(self.inputs) - set(self.models)):
            raise ValueError(f"inputs names {unknown}, which are not in models {self.models}")
        feeds: dict[str, set[str]] = {}
        for model, given in self.inputs.items():
            for source in (s for v in given.values() for s in ([v] if isinstance(v, str)
                                                                else v)):
                origin = source.split(".")[0]
                if origin != "data" and origin not in self.models:
                    raise ValueError(f"inputs of {model!r}: {source!r} is neither data.DATASET "
                                     f"nor MODEL.OUTPUT of a model in {self.models}")
                if origin != "data":
                    feeds.setdefault(model, set()).add(origin)
        for start in feeds:  # a path from a model back to itself is a cycle
            todo = list(feeds.get(start, ()))
            seen: set[str] = set()
            while todo:
                node = todo.pop()
                if node == start:
                    raise ValueError(f"inputs make a cycle through {start!r}: a model cannot "
                                     "depend on its own predictions")
                if node not in seen:
                    seen.add(node)
                    todo += feeds.get(node, ())


# --- loading -----------------------------------------------------------------------


_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")


def _check_node(path: Path, root: yaml.Node) -> None:
    """Refuse duplicate keys, deep nesting and alias bombs before anything is constructed.

    Aliases make the document a graph: its expanded size is counted with one visit per
    distinct node, so a "billion laughs" document is refused in microseconds.
    """
    sizes: dict[int, int] = {}

    def size(node: yaml.Node, depth: int) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if depth > MAX_DEPTH:
            raise SpecError(path, f"nested more than {MAX_DEPTH} levels deep",
                            line=node.start_mark.line + 1, fix="flatten the document")
        total = 1
        if isinstance(node, yaml.ScalarNode) and _BAD_TEXT.search(node.value):
            raise SpecError(path, "a value holds a NUL or an unpaired surrogate (\\ud800-"
                            "\\udfff), which no file or attribute can store",
                            line=node.start_mark.line + 1, fix="remove it")
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                    if (key.tag, key.value) in seen:
                        raise SpecError(path, f"duplicate key {key.value!r} (first on line "
                                        f"{seen[(key.tag, key.value)]})",
                                        line=key.start_mark.line + 1,
                                        fix="keep one of them")
                    seen[(key.tag, key.value)] = key.start_mark.line + 1
                total += size(key, depth + 1) + size(value, depth + 1)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(item, depth + 1) for item in node.value)
        if total > MAX_NODES:
            raise SpecError(path, f"expands to more than {MAX_NODES} values (YAML aliases?)",
                            line=node.start_mark.line + 1, fix="write the spec out plainly")
        sizes[id(node)] = total
        return total

    size(root, 0)


def _flow_depth(text: str) -> int:
    """The deepest nesting of [ and { (an upper bound: brackets in strings count too)."""
    depth = deepest = 0
    for m in re.finditer(r"[\[\]{}]", text):
        depth = depth + 1 if m.group() in "[{" else max(depth - 1, 0)
        deepest = max(deepest, depth)
    return deepest


def _loader(text: str) -> Any:
    """libyaml's loader (8x faster) when it is there and the nesting is shallow: its
    composer recurses in C and crashes on 100,000 nested brackets."""
    fast = getattr(yaml, "CSafeLoader", None)
    if fast is not None and _flow_depth(text) <= MAX_DEPTH:
        return fast(text)
    return yaml.SafeLoader(text)


def _parse(path: Path, text: str) -> tuple[Any, yaml.Node | None]:
    loader: Any = None
    try:
        loader = _loader(text)
        node = loader.get_single_node()
        if node is None:
            return None, None
        _check_node(path, node)
        return loader.construct_document(node), node
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        problem = (e.problem or e.context or "invalid YAML").strip()
        raise YamlSyntaxError(path, f"invalid YAML: {problem}", line=line,
                              fix="fix the YAML syntax") from None
    except yaml.YAMLError as e:
        raise YamlSyntaxError(path, f"invalid YAML: {e}", fix="fix the YAML syntax") from None
    except RecursionError:
        raise SpecError(path, f"nested more than {MAX_DEPTH} levels deep",
                        fix="flatten the document") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise SpecError(path, f"a value cannot be read: {str(e).split(';')[0]}",
                        fix="write it as a string") from None
    finally:
        if loader is not None:
            loader.dispose()


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """Line (1-based) of the deepest YAML node found along a pydantic error location."""
    line = node.start_mark.line + 1 if node is not None else None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == key:
                    node, line = v, k.start_mark.line + 1
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return line
    return line


_FIXES = {
    "extra_forbidden": "remove it (allowed keys are listed in the README's spec format)",
    "missing": "add it",
    "string_type": "write a quoted string",
    "int_type": "write an integer",
    "float_type": "write a number",
    "dict_type": "write a mapping (key: value)",
    "list_type": "write a list",
    "literal_error": None,
    "string_pattern_mismatch": None,
}


def _spec_error(path: Path, node: yaml.Node | None, err: ValidationError,
                drop: int = 0) -> SpecError:
    """The first problem as the error, every other one in its ``more``."""
    first, *rest = (_one_error(path, node, e, drop) for e in err.errors())
    seen = {str(first)}
    for other in rest:
        if str(other) not in seen:
            seen.add(str(other))
            first.more.append(other)
    return first


def _one_error(path: Path, node: yaml.Node | None, e: Any, drop: int) -> SpecError:
    loc = tuple(x for x in e["loc"] if x not in ("pip", "conda") and not (
        isinstance(x, str) and any(c in x for c in "[-,")))[drop:]  # union members' names
    if e["type"] in ("union_tag_invalid", "union_tag_not_found"):
        loc = ()
    field = ".".join(str(x) for x in loc) or None
    msg = e["msg"]
    if e["type"] == "extra_forbidden":
        msg = "unknown key"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if e["type"] not in ("extra_forbidden", "missing") and not isinstance(
            e.get("input", {}), (dict, list)):
        shown = repr(e["input"])
        msg += f" (got {shown if len(shown) < 60 else shown[:57] + '...'})"
    fix = _FIXES.get(e["type"])
    if e["type"] == "string_pattern_mismatch":
        fix = "use letters, digits, '_', '.', '-' (entrypoint: file.py:function)"
    return SpecError(path, msg, field=field, line=_line_of(node, loc), fix=fix)


_MODELS: dict[str, type[StrictModel]] = {"model": ModelSpec, "env": _EnvDoc,
                                          "compose": ComposeConfig}


def _check(doc: str, path: Path, data: Any, node: yaml.Node | None) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise SpecError(path, "expected a mapping at the top level", line=1,
                        fix="write key: value pairs")
    try:
        if doc == "env":
            return _EnvDoc.model_validate({"env": data}).env.model_dump()
        return _MODELS[doc].model_validate(data).model_dump()
    except ValidationError as err:
        raise _spec_error(path, node, err, drop=1 if doc == "env" else 0) from None


def validate(doc: str, path: Path, text: str) -> dict[str, Any]:
    """The document ``text`` (read from ``path``) validated as ``doc`` ("model", "env" or
    "compose"), as plain data; every problem is in the SpecError raised (the first, and
    the others in its ``more``)."""
    data, node = _parse(path, text)
    try:
        return _check(doc, path, data, node)
    except SpecError as e:
        if doc == "model" and type(e) is SpecError and isinstance(data, dict):
            # the fields are wrong: its name and entry file may be too
            e.more += [x for x in file_problems(path, data)
                       if str(x) not in {str(e), *map(str, e.more)}]
        raise


def validate_data(doc: str, data: Any, source: str) -> dict[str, Any]:
    """Data given in memory (a Snakemake module's config), validated as ``doc``."""
    if not isinstance(data, dict):
        raise SpecError(source, "expected a mapping (the composition)",
                        fix="pass the composition as the module's config")
    return _check(doc, Path(source), data, None)


def raw_mapping(path: Path) -> dict[str, Any] | None:
    """The spec file as a plain mapping (read safely, not validated), or None."""
    try:
        data, _ = _parse(path, read_text(path))
    except SpecError:
        return None
    return data if isinstance(data, dict) else None
