"""kmodel's Python API: what the CLI does, as functions and a model handle.

    import kmodel

    m = kmodel.get_model("mlp")          # like kipoi.get_model
    m.info["outputs"]                     # what `kmodel info mlp --json` prints
    m.env                                 # locked / built / where (nothing is built)
    preds = m.predict({"x": X})           # arrays in, {output: array} out, run in m's env
    m.predict_file("in.h5", "out.h5")     # HDF5 in, HDF5 out (streamed, with provenance)

    kmodel.compose_train("stacker", ["a.h5", "b.h5"], "train.h5", "weights/")
    kmodel.compose_apply("stacker", ["a_test.h5", "b_test.h5"], "weights/", "ensemble.h5")
    kmodel.status_of("workflows/demo.yaml")  # every output: fresh, stale (why) or missing
    kmodel.validate_specs(["model_specs/mlp"])  # kmodel validate: every problem of each file
    kmodel.test_models(["mlp"])               # kmodel test: each model on its own example

Every model still runs in its own env, in a separate process: numpy arrays go there and
back through temporary HDF5 files. Errors are ``kmodel.errors.KmodelError``s with the
same one-line messages as the CLI's.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kmodel._fs import check_input_file
from kmodel.defaults import TARGET_NAME
from kmodel.errors import KmodelError, UsageError
from kmodel.registry import EnvRef, Registry

if TYPE_CHECKING:
    import numpy as np

    from kmodel.envs.base import EnvStatus
    from kmodel.plan import Plan
    from kmodel.status import Entry
    from kmodel.validate import Validation

PathLike = str | Path


def checked_log(reg: Registry, log: PathLike, given: Sequence[PathLike | None] = ()) -> Path:
    """A log file for a model's own output, refused (KM402) when it is, or lies inside, a
    path the command was ``given`` (its inputs, outputs, weights) or a file of the search
    path's models (their folders, specs, env specs and locks): a log is emptied or appended
    to, and must never be a file kmodel reads or writes."""
    from kmodel._fs import guard_log

    path = _path(log, "log")
    keep = [Path(p) for p in given if p is not None]
    keep += [spec.parent for spec in reg.model_paths().values()] + reg.owned_files()
    guard_log(path, keep)
    return path


def search_path(specs: Sequence[PathLike] = (),
                envs: PathLike | Sequence[PathLike] | None = None) -> Registry:
    """Where models and envs are found: ``specs`` folders first, then KMODEL_PATH and
    ./model_specs; env specs in ``envs``, a folder or a list of folders searched in order
    (a string may join several with os.pathsep; default: KMODEL_ENVS, else ./envs)."""
    if envs is None:
        folders: list[Path] = []
    elif isinstance(envs, (str, Path)):
        folders = [Path(p) for p in str(envs).split(os.pathsep) if p]
    else:
        folders = [Path(p) for p in envs]
    return Registry([Path(s) for s in specs], folders)


@dataclass(frozen=True)
class ModelHandle:
    """One model, found by name; running it starts its own env's python."""

    name: str
    registry: Registry = field(default_factory=Registry, repr=False)

    @property
    def info(self) -> dict[str, Any]:
        """Name, version, description, inputs, outputs, env, lockfile, weights and hashes."""
        from kmodel._fs import sha256_file

        m = self.registry.model(self.name)
        env = self.registry.env_of(m)
        locked = env.lockfile.is_file()
        return summary(self.registry, self.name) | {
            "entrypoint": m.spec.entrypoint, "args": m.spec.args,
            "description": m.spec.description,
            "train_args": m.spec.train.args if m.spec.train else None,
            "inputs": [asdict(i) for i in m.spec.inputs],
            "outputs": [asdict(o) for o in m.spec.outputs],
            "env_spec": str(env.path), "env_kind": env.spec.kind,
            "lockfile": str(env.lockfile) if locked else None,
            "lock_sha256": sha256_file(env.lockfile) if locked else None,
            "spec_sha256": sha256_file(m.path),
            "weights": ({"path": str(m.weights_dir), "sha256": m.spec.weights.sha256}
                        if m.spec.weights else None),
            "resources": asdict(m.spec.resources) if m.spec.resources else None,
            "device": m.spec.device,
        }

    @property
    def env(self) -> EnvStatus:
        """The model's env: locked, drifted from its spec, built, and where (builds nothing;
        `predict` builds it on first use)."""
        from kmodel.envs import backend_for

        ref = self.registry.env_of(self.registry.model(self.name))
        return backend_for(ref).status(ref)

    def predict(self, data: np.ndarray | Mapping[str, np.ndarray] | PathLike, *,
                ids: Sequence[Any] | None = None, batch_size: int | None = None,
                ) -> dict[str, np.ndarray]:
        """Predict in the model's env. ``data``: one array (a model with one input), a
        dict of arrays by input name, or the path of an input HDF5 file. ``ids``: one id
        (str or int) per row (default 0, 1, ...). Returns the outputs by name, rows in the
        input's order. Every argument is checked before anything runs (KM002 names it).
        Safe to call from several threads at once (each call runs its own process)."""
        import numpy as np

        from kmodel.io import hdf5
        from kmodel.predict import batch_size_of, predict

        size = batch_size_of(batch_size)
        file: Path | None = None
        if isinstance(data, (str, os.PathLike)):
            if ids is not None:
                raise UsageError("predict: ids come from the input file's /metadata/id; "
                                 "leave ids out when data is a file's path")
            check_input_file(file := Path(data))
        else:
            if not isinstance(data, (np.ndarray, Mapping)):
                raise UsageError(f"predict takes an array, a dict of arrays or a file's "
                                 f"path, not {type(data).__name__}")
            arrays = dict(data) if isinstance(data, Mapping) else {
                self.registry.model(self.name).spec.inputs[0].name: data}
            if not arrays:
                raise UsageError("predict: the dict of inputs is empty; give each input of "
                                 "the model by name")
            _check_arrays(arrays)
            id_list = _check_ids(ids, len(next(iter(arrays.values()))))
        with tempfile.TemporaryDirectory(prefix="kmodel-api-") as tmp:
            source = file or Path(tmp) / "in.h5"
            if file is None:
                hdf5.write_table(source, {"inputs": arrays}, id_list)
            out = predict(self.registry, self.name, source, Path(tmp) / "out.h5",
                          batch_size=size)
            preds, _ = hdf5.read_group(out, "preds")
        return preds

    def predict_file(self, input: PathLike, output: PathLike, *, batch_size: int | None = None,
                     resume: bool = False, weights: PathLike | None = None,
                     threads: int | None = None, device: str | None = None,
                     log: PathLike | None = None) -> Path:
        """What `kmodel predict` does: ``output`` appears only when complete, with its
        provenance. ``weights``: a folder kmodel trained (with its hashes.json) instead of
        the model's own weights, e.g. an ensembler's. ``threads``, ``device`` (cpu, cuda,
        cuda:i, auto): instead of the spec's resources; ``log``: a file the model's own
        stdout and stderr are appended to."""
        from kmodel.predict import batch_size_of, predict
        from kmodel.resources import JobOptions
        from kmodel.weights import Weights

        size = batch_size_of(batch_size)
        if not isinstance(resume, bool):
            raise UsageError(f"predict_file: resume is True or False, not {resume!r}")
        return predict(self.registry, self.name, _path(input, "input"), _path(output, "output"),
                       batch_size=size, resume=resume,
                       weights=Weights.from_folder(Path(weights)) if weights else None,
                       options=JobOptions(threads, device, None if log is None else checked_log(
                           self.registry, log, [input, output, f"{output}.partial",
                                                f"{output}.lock", weights])))

    @property
    def own_weights(self) -> Path:
        """The model's own weights folder (its spec's ``weights.path``, else weights/)."""
        m = self.registry.model(self.name)
        return m.folder / (m.spec.weights.path if m.spec.weights else "weights")

    def train(self, input: PathLike, output: PathLike, *, targets: str = TARGET_NAME,
              threads: int | None = None, device: str | None = None,
              log: PathLike | None = None, echo: bool = False) -> Path:
        """Fit the model on /inputs and /targets of ``input`` in its env and write the
        weights folder ``output``. Into the model's own weights folder the files' sha256
        are recorded in its spec; elsewhere the folder gets a hashes.json. ``threads``,
        ``device``, ``log``, ``echo``: as for predict_file (``echo``: the model's output
        also to stderr)."""
        from kmodel.resources import JobOptions
        from kmodel.train import train
        from kmodel.weights import write_hashes

        out = _path(output, "output")
        mine = out.resolve() == self.own_weights.resolve()
        train(self.registry, self.name, _path(input, "input"), out, targets=targets,
              manifest=not mine, options=JobOptions(
                  threads, device,
                  None if log is None else checked_log(self.registry, log, [input, out]), echo))
        if mine:
            write_hashes(self.registry.model(self.name))
        return out


def get_model(name: str, *, specs: Sequence[PathLike] = (),
              envs: PathLike | None = None) -> ModelHandle:
    """The model ``name`` (checked now: an unknown name or a broken spec raises)."""
    if not isinstance(name, str):
        raise UsageError(f"get_model: a model's name is a string, not {type(name).__name__}")
    reg = search_path(specs, envs)
    reg.model(name)
    return ModelHandle(name, reg)


def listing(reg: Registry) -> tuple[list[dict[str, Any]], list[KmodelError]]:
    """`kmodel ls`: a summary of every model found, and the errors of specs that do not
    load (the others are still listed)."""
    models, broken = [], []
    for name in reg.model_paths():
        try:
            models.append(summary(reg, name))
        except KmodelError as e:
            broken.append(e)
    return models, broken


def summary(reg: Registry, name: str) -> dict[str, Any]:
    """A model's line in `kmodel ls`: name, version, env, path, description."""
    m = reg.model(name)
    s = m.spec
    return {"name": s.name, "version": s.version, "env": s.env, "path": str(m.path),
            "description": s.description, "trainable": s.train is not None,
            "weights": bool(s.weights)}


def example_data(train: PathLike, test: PathLike, *, seed: int = 0,
                 test_fraction: float = 0.3, blend: PathLike | None = None) -> None:
    """`kmodel data breast_cancer`: a stratified split of scikit-learn's breast_cancer;
    with ``blend``, the test rows halved into blend and test splits."""
    from kmodel.datasets import breast_cancer

    breast_cancer(_path(train, "train"), _path(test, "test"), seed=seed,
                  test_fraction=test_fraction,
                  blend=_path(blend, "blend") if blend is not None else None)


def stacked_input(preds: Sequence[PathLike], output: PathLike, *,
                  allow_mixed_inputs: bool = False) -> Path:
    """Write the ensembler's input as one file: /inputs/x holds every prediction file's
    columns, rows aligned by id to the first file's (what the composer streams)."""
    from kmodel._fs import atomic_path, guard_output
    from kmodel.compose import stack
    from kmodel.io import hdf5

    files, out = _paths(preds, "preds"), _path(output, "output")
    guard_output(out, files, replaceable=hdf5.is_example_data)
    x, ids, _ = stack(files, allow_mixed_inputs=allow_mixed_inputs)
    with atomic_path(out) as tmp:
        hdf5.write_table(tmp, {"inputs": {"x": x}}, ids, attrs={"dataset": "stacked input"})
    return out


def compose_train(ensembler: str, preds: Sequence[PathLike], targets: PathLike,
                  weights_out: PathLike, *, target_name: str = TARGET_NAME,
                  task: str | None = None, stacking: str = "cv",
                  allow_mixed_inputs: bool = False, reg: Registry | None = None) -> Path:
    """Train the ensembler on stored predictions (aligned by id to the targets' file):
    out-of-fold predictions (``stacking="cv"``) or predictions of rows the base models never
    saw (``"holdout"``); rows a base model was trained on are refused unless
    ``stacking="in-sample"``. ``task``: binary, multiclass or regression (default:
    inferred from the targets)."""
    from kmodel.compose import train

    train(reg or Registry(), ensembler, _paths(preds, "preds"), _path(targets, "targets"),
          _path(weights_out, "weights_out"), target_name=target_name, task=task,
          stacking=stacking, allow_mixed_inputs=allow_mixed_inputs)
    return Path(weights_out)


def compose_apply(ensembler: str, preds: Sequence[PathLike], weights: PathLike,
                  output: PathLike, *, allow_mixed_inputs: bool = False,
                  reg: Registry | None = None) -> Path:
    """Apply the trained ensembler to stored predictions; write ``output``."""
    from kmodel.compose import apply

    return apply(reg or Registry(), ensembler, _paths(preds, "preds"), _path(weights, "weights"),
                 _path(output, "output"), allow_mixed_inputs=allow_mixed_inputs)


def status_of(config: PathLike, *, reg: Registry | None = None) -> list[Entry]:
    """Every output of a composition: ``.state`` fresh, stale or missing, ``.reasons``."""
    from kmodel.plan import load_plan
    from kmodel.status import status as outputs

    base = reg or Registry()
    plan = load_plan(_path(config, "config"), base)
    return outputs(plan, plan.registry(base))


def run(config: PathLike, *, cores: int | None = None, snakemake_args: Sequence[str] = (),
        reg: Registry | None = None) -> Plan:
    """`kmodel run`: the composition end to end with Snakemake (only what is stale).
    ``cores``: at most this many at once (default 1); with a cluster profile (or executor)
    in ``snakemake_args``, unset lets each job have the threads its model asks for."""
    from kmodel import workflow

    return workflow.run(_path(config, "config"), reg or Registry(), cores=cores,
                        extra=list(snakemake_args)).plan


def validate_specs(paths: Sequence[PathLike] = (), *, reg: Registry | None = None
             ) -> list[Validation]:
    """`kmodel validate`: each spec file (or model folder) checked, every problem of each;
    by default every model and env found and ./workflows/*.yaml."""
    from kmodel.validate import validate as check

    return check(reg or Registry(), [_path(p, "paths") for p in paths])


def test_models(names: Sequence[str] = (), *, every: bool = False,
                reg: Registry | None = None) -> list[dict[str, Any]]:
    """`kmodel test`: each model run on its spec's example, compared within tolerance."""
    from kmodel.modeltest import run_tests

    return run_tests(reg or Registry(), list(names), every=every)


def check_hashes(name: str, *, reg: Registry | None = None) -> list[tuple[str, str]]:
    """`kmodel hash`: (state, file) for each weight file against the spec's sha256."""
    from kmodel.weights import compare

    registry = reg or Registry()
    return compare(registry.model(name))


def envs(names: Sequence[str] = (), *, every: bool = False,
         reg: Registry | None = None) -> list[EnvRef[Any]]:
    """The envs named (by env or model name), or every env: what `kmodel env` takes."""
    return (reg or Registry()).env_refs(list(names), every=every)


def _check_arrays(arrays: Mapping[str, Any]) -> None:
    """predict's input arrays: non-empty numpy arrays of numbers, one row per item, every
    input with as many rows as the first."""
    import numpy as np

    rows = None
    for key, arr in arrays.items():
        if not isinstance(arr, np.ndarray) or arr.ndim == 0 or not len(arr) \
                or arr.dtype.kind not in "biuf":
            raise UsageError(f"predict: input {key} must be a non-empty numpy array of "
                             "numbers, one row per item, not "
                             f"{getattr(arr, 'dtype', type(arr).__name__)} "
                             f"{getattr(arr, 'shape', '')}")
        if rows is not None and len(arr) != rows:
            raise UsageError(f"predict: input {key} has {len(arr)} rows, the first input "
                             f"has {rows}; give every input one row per item")
        rows = len(arr) if rows is None else rows


def _check_ids(ids: Any, rows: int) -> list[Any] | np.ndarray:
    """predict's ``ids``: None (0, 1, ...), or one str or int per row."""
    import numpy as np

    if ids is None:
        return [str(i) for i in range(rows)]
    if isinstance(ids, (str, bytes)) or not isinstance(ids, (Sequence, np.ndarray)) \
            or (isinstance(ids, np.ndarray) and ids.ndim != 1):
        raise UsageError(f"predict: ids is a list (or 1-D array) of ids, one per row, not "
                         f"{type(ids).__name__} {getattr(ids, 'shape', '')}".rstrip())
    if len(ids) != rows:
        raise UsageError(f"predict: ids has {len(ids)} item(s) but the data has {rows} "
                         "row(s); give one id per row, or leave ids out (0, 1, ...)")
    kinds = (str, bytes, int, np.integer, np.str_, np.bytes_)
    good = ids.dtype.kind in "SUiu" if isinstance(ids, np.ndarray) and ids.dtype.kind != "O" \
        else all(isinstance(i, kinds) and not isinstance(i, (bool, np.bool_)) for i in ids)
    if not good:
        bad = next((i for i in ids if not isinstance(i, kinds) or isinstance(i, bool)),
                   ids[0] if len(ids) else None)
        raise UsageError(f"predict: ids are strings or integers, not {bad!r} "
                         f"({type(bad).__name__})")
    return ids if isinstance(ids, np.ndarray) else list(ids)


def _path(value: Any, what: str) -> Path:
    """A path argument, or a UsageError saying what was given instead."""
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise UsageError(f"{what} is a path (str or Path), not {value!r}")
    return Path(value)


def _paths(values: Any, what: str) -> list[Path]:
    """A non-empty list of existing files."""
    if isinstance(values, (str, os.PathLike)) or not isinstance(values, Sequence) or not values:
        raise UsageError(f"{what} is a non-empty list of files, not {values!r}")
    paths = [_path(v, what) for v in values]
    for p in paths:
        check_input_file(p)
    return paths


__all__ = ["ModelHandle", "check_hashes", "compose_apply", "compose_train", "envs",
           "example_data", "get_model", "listing", "run", "search_path", "stacked_input",
           "status_of", "summary", "test_models", "validate_specs"]
