"""The composer: align stored predictions by id, train the ensembler, apply it, score.

Base predictions become the ensembler's single input ``x`` (one column per model output,
in the order given). Rows are aligned by /metadata/id against a reference file (the
targets file when training, the first prediction file when applying).
"""

from __future__ import annotations

import json
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from kmodel import checksums, metrics, provenance, record
from kmodel import predict as predict_mod
from kmodel import train as train_mod
from kmodel._fs import check_input_file, file_signature, guard_output
from kmodel.defaults import COMPOSE_BATCH_SIZE, TARGET_NAME
from kmodel.errors import (
    IdAlignmentError,
    InputSchemaError,
    MixedInputsError,
    NotFiniteError,
    TargetLengthError,
    TaskError,
    TrainingOverlapError,
    UsageError,
)
from kmodel.io import hdf5
from kmodel.launch import Progress
from kmodel.record import PredictionRecord
from kmodel.registry import Model, Registry
from kmodel.resources import JobOptions
from kmodel.weights import WEIGHTS_MANIFEST, Weights


def _record(path: Path) -> PredictionRecord:
    """A prediction file's record; an empty one where it cannot be read (_read says why)."""
    try:
        return record.read(path)
    except (OSError, RuntimeError, ValueError):
        return PredictionRecord()


def _read(path: Path, group: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A group's datasets and the ids as bytes (string or integer ids, e.g. Kipoi's)."""
    check_input_file(path)
    kind = "prediction" if group == "preds" else "input"
    try:
        arrays, ids = hdf5.read_group(path, group)
        return arrays, hdf5.as_ids(ids)
    except hdf5.LengthError as e:
        if group == "targets":
            raise TargetLengthError(f"{path}: {e}; they must match") from None
        raise InputSchemaError(f"{path}: {e}; they must match") from None
    except hdf5.LayoutError as e:
        raise InputSchemaError(f"{path}: {e}; is it a kmodel {kind} file?") from None
    except (OSError, KeyError, TypeError, RuntimeError) as e:
        raise InputSchemaError(f"{path}: not an HDF5 {kind} file ({e}); give kmodel "
                               f"{kind} files") from None


def _finite(path: Path, what: str, values: np.ndarray, ids: np.ndarray) -> None:
    """NaN or inf (also from float32 overflow) would train an ensembler with NaN weights:
    refuse them by name."""
    if values.dtype.kind != "f":
        return
    bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if bad.any():
        first = ids[bad][0].decode(errors="replace")
        raise NotFiniteError(f"{path}: {what} has {int(bad.sum())} row(s) with NaN or inf "
                             f"(or beyond float32), e.g. id {first!r}; drop or fix those rows")


def check_same_input(preds: Sequence[Path]) -> None:
    """Prediction files made from different inputs cannot be aligned meaningfully."""
    seen: tuple[Path, str] | None = None
    for path in preds:
        digest = _record(path).input_sha256
        if not digest:
            continue  # e.g. a Kipoi file: no provenance to compare
        if seen is None:
            seen = (path, digest)
        elif digest != seen[1]:
            raise MixedInputsError(
                f"{path} was made from a different input than {seen[0]} (input_sha256 "
                f"{digest[:12]}… vs {seen[1][:12]}…); predict every model on the same "
                "input, or pass --allow-mixed-inputs if that is intended")


def align(reference: np.ndarray, ids: np.ndarray, path: Path) -> np.ndarray:
    """Row indices into ``ids`` that put them in ``reference`` order, or a clear error.

    By 64-bit hashes of the ids (one sort of integers, not of strings), then checked
    exactly: the ids the indices pick must equal the reference's. Should two different
    ids ever share a hash, the exact (slower) way decides."""
    hashes = hdf5.id_hashes(np.asarray(ids))
    order = np.argsort(hashes, kind="stable")
    hashes = hashes[order]
    wanted = hdf5.id_hashes(np.asarray(reference))
    if len(hashes) and not (hashes[1:] == hashes[:-1]).any():
        pos = np.minimum(np.searchsorted(hashes, wanted), len(hashes) - 1)
        del hashes
        found = order[pos]
        if np.array_equal(ids[found], reference) and len(ids) == len(reference):
            return found
    return _align_exactly(reference, ids, path)


def _align_exactly(reference: np.ndarray, ids: np.ndarray, path: Path) -> np.ndarray:
    """``align`` by sorting the ids themselves; says which ids are duplicated or missing."""
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1]
        raise IdAlignmentError(f"{path}: {len(dup)} duplicated id(s) in /metadata/id, e.g. "
                               f"{dup[0].decode(errors='replace')!r}; each row needs a unique id")
    order = np.argsort(ids, kind="stable")
    pos = np.searchsorted(ids, reference, sorter=order)
    pos = np.minimum(pos, len(ids) - 1)
    found = order[pos]
    missing = ids[found] != reference if len(ids) else np.ones(len(reference), bool)
    if missing.any():
        first = bytes(reference[missing][0]).decode(errors="replace")
        raise IdAlignmentError(f"{path}: {int(missing.sum())} id(s) of the reference file are "
                               f"missing, e.g. {first!r}; predict on the same input file")
    if len(ids) != len(reference):
        raise IdAlignmentError(f"{path}: {len(ids) - len(reference)} id(s) not in the "
                               "reference file; predict on the same input file")
    return found


def stack(preds: Sequence[Path], reference: np.ndarray | None = None, *,
          allow_mixed_inputs: bool = False) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Columns of all prediction files, aligned to ``reference`` ids (default: the first's),
    and what each file holds (``model:output,...``), in order."""
    for path in preds:
        check_input_file(path)  # before anything opens it (a FIFO would block)
    if not allow_mixed_inputs:
        check_same_input(preds)
    columns, sources = [], []
    for path in preds:
        arrays, ids = _read(path, "preds")
        if not arrays:
            raise InputSchemaError(f"{path}: no datasets in /preds; is it a prediction file?")
        if len(ids) == 0:
            raise IdAlignmentError(f"{path}: no rows; predict on a non-empty input")
        if reference is None:
            reference = ids
        rows = align(reference, ids, path)
        for name in sorted(arrays):
            with np.errstate(over="ignore", invalid="ignore"):
                column = arrays[name][rows].reshape(len(rows), -1).astype(np.float32)
            _finite(path, f"/preds/{name}", column, reference)
            columns.append(column)
        sources.append(f"{_record(path).model or path.stem}:{','.join(sorted(arrays))}")
    assert reference is not None
    return np.concatenate(columns, axis=1), reference, sources


def targets_of(path: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    arrays, ids = _read(path, "targets")
    if name not in arrays:
        raise TargetLengthError(f"{path}: no /targets/{name} (found {sorted(arrays)}); "
                                "set the composition's targets: to an existing name")
    y = arrays[name]
    if len(ids) == 0:
        raise TargetLengthError(f"{path}: no rows (/metadata/id is empty); nothing to train "
                                "or score on")
    if len(y) != len(ids):
        raise TargetLengthError(f"{path}: /targets/{name} has {len(y)} rows but /metadata/id "
                                f"has {len(ids)}; they must match")
    if y.ndim != 1:
        raise TargetLengthError(f"{path}: /targets/{name} has shape {y.shape}; write one "
                                "target value per row (shape (N,))")
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():  # even where the predictions repeat them in the same order
        dup = uniq[counts > 1][0]
        shown = dup.decode(errors="replace") if isinstance(dup, bytes) else dup
        raise IdAlignmentError(f"{path}: {int((counts > 1).sum())} duplicated id(s) in "
                               f"/metadata/id, e.g. {shown!r}; each row needs a unique id")
    _finite(path, f"/targets/{name}", y, ids)
    return y, ids


@dataclass(frozen=True)
class Task:
    """What the ensembler is fitted for: the task, its classes (classification), the
    prediction dataset to take from each model's file when it has several, and the input
    datasets of the data files that go to the ensembler as they are (``passthrough``)."""

    task: metrics.Task
    classes: list[Any] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    passthrough: list[str] = field(default_factory=list)

    @property
    def width(self) -> int:
        """Columns a model gives the ensembler: one per class for multiclass, else one."""
        return len(self.classes) if self.task == "multiclass" else 1


def task_of(targets: Path, target_name: str, task: str | None = None,
            outputs: dict[str, str] | None = None, passthrough: Sequence[str] = ()) -> Task:
    """The task of a composition: as given, else inferred from the targets."""
    y, _ = targets_of(targets, target_name)
    found = metrics.as_task(task) if task is not None else metrics.infer_task(y)
    classes = [] if found == "regression" else [
        v.item() if hasattr(v, "item") else v for v in metrics.classes_of(y)]
    if found != "regression" and len(classes) < 2:
        raise TaskError(f"{targets}: /targets/{target_name} holds one class ({classes[0]!r}); "
                        f"a {found} task needs at least two: check the targets (or write "
                        "task: regression)")
    if found == "binary" and len(classes) > 2:
        raise TaskError(f"{targets}: /targets/{target_name} holds {len(classes)} classes, "
                        "so the task is not binary; write task: multiclass (or leave task "
                        "out)")
    if found == "multiclass" and len(classes) < 3:
        raise TaskError(f"{targets}: /targets/{target_name} holds {len(classes)} class(es); "
                        "a multiclass task needs at least three (task: binary for two)")
    return Task(found, classes, dict(outputs or {}), list(passthrough))


@dataclass(frozen=True)
class Sources:
    """Prediction files as the ensembler's input columns, aligned to a reference's ids."""

    columns: list[tuple[Path, str]]  # (file, 1-D dataset), in order
    labels: list[str]  # each column's origin (file:/dataset[j]), for error messages
    names: list[str]  # what each file gives, ``model:output``, then ``data:NAME`` raw
    dtype: str  # float64 if any column is (converted per batch in the runner)
    rows: int
    models: int  # files of predictions (then the raw columns)
    raw: int  # raw input columns passed through


def _layout(path: Path) -> list[tuple[str, tuple[int, ...], np.dtype]]:
    try:
        layout = hdf5.preds_layout(path)
    except hdf5.LayoutError as e:
        raise InputSchemaError(f"{path}: {e}; is it a kmodel prediction file?") from None
    except (OSError, KeyError, TypeError, RuntimeError) as e:
        raise InputSchemaError(f"{path}: not an HDF5 prediction file ({e}); give kmodel "
                               "prediction files") from None
    if not layout:
        raise InputSchemaError(f"{path}: no datasets in /preds; is it a prediction file?")
    return layout


def _count(path: Path, empty: bool = False) -> int:
    """Rows of a file (its ids), or a clear error (no rows is one, unless ``empty``)."""
    try:
        rows = hdf5.count_ids(path)
    except hdf5.LayoutError as e:
        raise InputSchemaError(f"{path}: {e}; is it a kmodel file?") from None
    except (OSError, KeyError, TypeError, RuntimeError) as e:
        raise InputSchemaError(f"{path}: not a kmodel HDF5 file ({e})") from None
    if rows == 0 and not empty:
        raise IdAlignmentError(f"{path}: no rows; predict on a non-empty input")
    return rows


def _classes_attr(path: Path, dataset: str) -> list[Any] | None:
    """The class of each column of a prediction dataset, if its model's spec says."""
    try:
        value = hdf5.dataset_attrs(path, dataset).get("classes")
        return list(json.loads(value)) if value is not None else None
    except (OSError, ValueError, TypeError):
        return None


def prediction_columns(path: Path, task: Task, model: str
                       ) -> tuple[str, str, list[int | None]]:
    """Which prediction of ``path`` the task takes: (output key, dataset path, its column
    indices in the task's order): P(y = the larger class) for binary, a column per class
    (in the classes' order) for multiclass, the value for regression."""
    layout = _layout(path)
    widths = {name.rsplit("/", 1)[-1]: int(np.prod(shape[1:])) for name, shape, _ in layout}
    paths = {name.rsplit("/", 1)[-1]: name for name, _, _ in layout}
    chosen = task.outputs.get(model)
    if chosen is None:
        fits = [k for k, w in widths.items() if w == task.width or (
            task.task == "binary" and w == 2)]
        chosen = next(iter(widths)) if len(widths) == 1 else fits[0] if len(fits) == 1 else None
    if chosen is None or chosen not in widths:
        why = f"has no dataset {chosen!r}" if chosen else "holds several predictions"
        raise InputSchemaError(f"{path} {why} ({', '.join(widths)}); name the one to "
                               f"ensemble: outputs: {{{model}: NAME}} in the composition "
                               "(--output MODEL=NAME)")
    width, one_d = widths[chosen], len(next(s for n, s, _ in layout if n == paths[chosen])) == 1
    order = _class_order(path, paths[chosen], width, task)
    return chosen, paths[chosen], [None if one_d else j for j in order]


def _class_order(path: Path, dataset: str, width: int, task: Task) -> list[int]:
    """The columns of a prediction, in the task's order (checked: a prediction the task
    cannot take is an error naming the file)."""
    named = _classes_attr(path, dataset)
    if task.task == "regression" or (task.task == "binary" and width == 1):
        if width != 1:
            raise TaskError(f"{path}: /{dataset} has {width} values a row; a {task.task} "
                            "ensemble takes one")
        return [0]
    if task.task == "binary":
        if width != 2:
            raise TaskError(f"{path}: /{dataset} has {width} values a row; a binary ensemble "
                            "takes P(y=1), or [P(y=0), P(y=1)]")
        return [named.index(task.classes[-1])] if named and task.classes[-1] in named else [1]
    if width != len(task.classes):
        raise TaskError(f"{path}: /{dataset} has {width} values a row; the targets hold "
                        f"{len(task.classes)} classes {task.classes}: give one probability "
                        "per class")
    if named is None:
        return list(range(width))
    missing = [c for c in task.classes if c not in named]
    if missing:
        raise TaskError(f"{path}: /{dataset} has no column of class {missing[0]!r} "
                        f"(its columns: {named})")
    return [named.index(c) for c in task.classes]


def sources(preds: Sequence[Path], reference: Path, tmp: Path, task: Task, *,
            data: Path | None = None, allow_mixed_inputs: bool = False) -> Sources:
    """Check the prediction files and line the task's columns up with ``reference``'s ids;
    then the ``task.passthrough`` input datasets of ``data``.

    The common case (every file holds the reference's ids in its order, checked a block at
    a time) reads nothing else: the ensembler then reads the files' own datasets through a
    virtual file. A file in another order, or with rows of more than one value, is copied
    to ``tmp`` in the reference's order first.
    """
    for path in preds:
        check_input_file(path)  # before anything opens it (a FIFO would block)
    if not allow_mixed_inputs:
        check_same_input(preds)
    rows = _count(reference, empty=True)  # (training refuses empty targets before this)
    columns: list[tuple[Path, str]] = []
    labels: list[str] = []
    names, wide = [], False
    for k, path in enumerate(preds):
        _count(path, empty=True)
        checksums.check(path)
        model = _record(path).model or path.stem
        key, dataset, cols = prediction_columns(path, task, model)
        columns += _aligned(path, [(dataset, c) for c in cols], reference,
                            tmp / f"aligned-{k}.h5")
        labels += [f"{path}:/{dataset}" + (f"[{c}]" if c is not None else "") for c in cols]
        wide |= any(dtype.itemsize > 4 or dtype.kind != "f" for n, _, dtype in _layout(path)
                    if n == dataset)
        names.append(f"{model}:{key}")
    raw = 0
    if task.passthrough:
        if data is None:
            raise UsageError("passthrough needs the data file with the raw inputs (--data)")
        raw_cols = _passthrough(data, task.passthrough)
        checksums.check(data)
        columns += _aligned(data, raw_cols, reference, tmp / "passthrough.h5")
        labels += [f"{data}:/{name}" + (f"[{c}]" if c is not None else "")
                   for name, c in raw_cols]
        names += [f"data:{n}" for n in task.passthrough]
        raw, wide = len(raw_cols), True
    return Sources(columns, labels, names, "float64" if wide else "float32", rows, len(preds),
                   raw)


def _passthrough(data: Path, names: Sequence[str]) -> list[tuple[str, int | None]]:
    """The columns (dataset path, column index) of the input datasets ``names`` of ``data``."""
    check_input_file(data)
    try:
        every = hdf5.columns_of(data, "inputs")
    except (OSError, hdf5.LayoutError) as e:
        raise InputSchemaError(f"{data}: {e}; passthrough takes /inputs/<name>") from None
    found = {key for key, _, _ in every}
    if missing := [n for n in names if n not in found]:
        raise InputSchemaError(f"{data}: no /inputs/{missing[0]} to pass through to the "
                               f"ensembler (found {sorted(found) or 'none'}); fix passthrough")
    return [(path, col) for name in names for key, path, col in every if key == name]


def _aligned(path: Path, cols: list[tuple[str, int | None]], reference: Path, copy: Path
             ) -> list[tuple[Path, str]]:
    """Columns (dataset path, column index) of ``path`` as (file, 1-D dataset) in
    ``reference``'s row order: its own datasets when they are, else a copy's."""
    same = _same_ids(reference, path)
    if same and all(c is None for _, c in cols):
        return [(path, name) for name, _ in cols]
    order = None if same else _order(reference, path)
    return [(copy, name) for name in hdf5.write_aligned(path, copy, order, cols)]


_ORDERS: dict[tuple[str, str], np.ndarray] = {}
_ORDERS_LOCK = threading.Lock()  # the API may compose from several threads


def _order(reference: Path, path: Path) -> np.ndarray:
    """The rows of ``path`` in ``reference``'s order, computed once per distinct order of
    ids (files written in one tool's order share it: Kipoi's, a shard's)."""
    import hashlib

    ids = hdf5.read_ids(path)
    key = (f"{reference.resolve()}|{file_signature(reference)}",
           hashlib.blake2b(ids.tobytes(), digest_size=16).hexdigest())
    with _ORDERS_LOCK:
        if key not in _ORDERS:
            _ORDERS.clear()  # one reference at a time: bounded memory
            _ORDERS[key] = align(hdf5.read_ids(reference), ids, path)
        return _ORDERS[key]


def _same_ids(a: Path, b: Path) -> bool:
    """Both files hold the same ids in the same order (probed only where both records say
    they are whole predictions of the same rows of one input)."""
    return hdf5.same_ids(a, b, trusted=_record(a).same_rows_as(_record(b)))


def check_rows_apart(preds: Sequence[Path], targets: Path) -> list[str]:
    """The ensembler must not be fitted on rows a base model was trained on: for each
    prediction file whose weights record their training rows, those rows and the targets'
    are compared. Raises TrainingOverlapError naming the model and the overlap; returns
    the models whose training rows are unknown (weights that record none)."""
    ids = hdf5.read_ids(targets)
    unknown = []
    for path in preds:
        found = _record(path)
        model = found.model or path.stem
        if found.folds:  # out-of-fold: each row predicted by a model that never saw it
            continue
        kept = provenance.read_folder_record(found.weights_folder) \
            if found.weights_folder else None
        if kept is None or kept.trained_on is None:
            unknown.append(model)
            continue
        count, first = kept.trained_on.overlap(ids)
        if count:
            raise TrainingOverlapError(
                f"model {model!r} ({path}) was trained on {count} of the {len(ids)} rows the "
                f"ensembler would be fitted on (e.g. id {first!r}): its predictions there are "
                "in-sample; fit the ensembler on rows no base model saw (stacking: {method: "
                "cv} for trainable models, or data: {blend: FILE} with stacking: {method: "
                "holdout}), or accept it with stacking: {method: in-sample} (flagged)")
    return unknown


def train(registry: Registry, ensembler: str, preds: Sequence[Path], targets: Path,
          weights_out: Path, *, target_name: str = TARGET_NAME, task: str | None = None,
          outputs: dict[str, str] | None = None, passthrough: Sequence[str] = (),
          stacking: str = "cv", allow_mixed_inputs: bool = False,
          progress: Progress | None = None, options: JobOptions | None = None) -> Weights:
    """Fit the ensembler on stored predictions aligned to the targets' ids.

    ``task`` (binary, multiclass, regression; inferred from the targets when None) decides
    which columns of each file go in; ``passthrough`` input datasets of the targets' file
    follow them. ``stacking`` says how the rows were kept apart from the base models'
    training rows: unless it is ``in-sample``, rows a base model was trained on are
    refused (TrainingOverlapError). Nothing is stacked in this process: the ensembler's
    runner reads the columns through a small virtual HDF5 file.
    """
    for path in [*preds, targets]:  # regular, readable files (a FIFO would block)
        check_input_file(path)
    guard_output(weights_out, [*preds, targets], folder=True)
    found_task = task_of(targets, target_name, task, outputs, passthrough)
    if stacking != "in-sample":
        check_rows_apart(preds, targets)
    model = registry.model(ensembler)
    made = provenance.of_model(registry, model, None)
    read = provenance.upstream([*preds, targets], weights_out)
    with tempfile.TemporaryDirectory(prefix="kmodel-compose-") as tmp:
        found = sources(preds, targets, Path(tmp), found_task, data=targets,
                        allow_mixed_inputs=allow_mixed_inputs)
        _takes(model, found)
        table = Path(tmp) / "train.h5"
        hdf5.write_virtual(table, found.rows, found.columns, found.dtype, ids_from=targets,
                           extra={f"targets/{target_name}": (targets,
                                                              f"targets/{target_name}")})
        kept = replace(provenance.folder_record(made, read, found.names, stacking),
                       task=found_task.task, classes=found_task.classes,
                       outputs=found_task.outputs, passthrough=found_task.passthrough)
        fit_args = {"task": found_task.task, "classes": found_task.classes or None,
                    "n_models": found.models, "n_raw": found.raw}
        return train_mod.train(registry, ensembler, table, weights_out, targets=target_name,
                               record=kept, fit_args=fit_args, trained_from=targets,
                               progress=progress, inputs=(*preds, targets),
                               columns=found.labels, options=options)


def _takes(model: Model, found: Sources) -> None:
    """The ensembler's one input must take a row of every prediction file's columns."""
    inputs = model.spec.inputs
    width = len(found.columns)
    shape = tuple(inputs[0].shape or ()) if len(inputs) == 1 else None
    if shape is None or shape not in ((width,), (None,)):
        want = f"x of shape {list(shape)}" if shape is not None else f"{len(inputs)} inputs"
        raise InputSchemaError(f"ensembler {model.name!r} takes {want}; the prediction files "
                               f"give {width} column(s) ({', '.join(found.names)}): choose an "
                               "ensembler whose one input is [N] or [null] for N columns")


def apply(registry: Registry, ensembler: str, preds: Sequence[Path], weights: Path,
          output: Path, *, data: Path | None = None, allow_mixed_inputs: bool = False,
          progress: Progress | None = None, options: JobOptions | None = None) -> Path:
    """Run the trained ensembler on stored predictions; write ``output`` atomically.

    The task, classes and passthrough datasets are the ones it was trained with (its
    record); ``data``: the file holding the passthrough inputs. Streamed: the ensembler's
    runner reads the prediction files batch by batch through a small virtual HDF5 file
    (rows aligned to the first file's ids)."""
    for path in preds:
        check_input_file(path)
    w = Weights.from_folder(weights)
    guard_output(output, [*preds, *w.files, w.folder / WEIGHTS_MANIFEST,
                          *registry.owned_files()],
                 siblings=(".partial", ".lock"), replaceable=hdf5.is_prediction)
    kept = provenance.read_folder_record(w.folder)
    if kept is None or kept.task is None:
        raise InputSchemaError(f"{weights}: its provenance.json records no task (trained by "
                               "an older kmodel); train the ensembler again (kmodel compose "
                               "train)")
    task = Task(metrics.as_task(kept.task), list(kept.classes or []), dict(kept.outputs or {}),
                list(kept.passthrough or []))
    with tempfile.TemporaryDirectory(prefix="kmodel-compose-") as tmp:
        found = sources(preds, preds[0], Path(tmp), task, data=data,
                        allow_mixed_inputs=allow_mixed_inputs)
        trained_on = kept.sources or found.names
        if found.names != trained_on:
            raise InputSchemaError(f"{weights} was trained on {', '.join(trained_on)} (in this "
                                   f"order), got {', '.join(found.names)}; pass the same "
                                   "models' predictions in the training order")
        _takes(registry.model(ensembler), found)
        table = Path(tmp) / "apply.h5"
        hdf5.write_virtual(table, found.rows, found.columns, found.dtype, ids_from=preds[0])
        return predict_mod.predict(registry, ensembler, table, output, weights=w,
                                   progress=progress,
                                   upstream=[*preds, *([data] if data else [])],
                                   columns=found.labels, batch_size=COMPOSE_BATCH_SIZE,
                                   options=options)


def first_column(path: Path, reference: Path) -> np.ndarray:
    """The first prediction column of ``path`` in ``reference``'s row order, checked finite.

    One column at a time: when the ids are in the reference's order (checked cheaply),
    only that column is read; otherwise the file is aligned in memory."""
    check_input_file(path)
    layout = _layout(path)
    _count(path)
    name, shape, _ = layout[0]
    if len(shape) == 1 and _same_ids(reference, path):
        with np.errstate(over="ignore", invalid="ignore"):
            column = hdf5.read_column(path, name).astype(np.float32)
        if not np.isfinite(column).all():  # the ids only to name the first bad row
            _finite(path, f"/{name}", column, hdf5.read_ids(path))
        return column
    x, _, _ = stack([path], hdf5.read_ids(reference))  # checked in stack
    return x[:, 0]
