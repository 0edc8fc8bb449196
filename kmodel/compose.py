"""The composer: align stored predictions by id, train the ensembler, apply it, score.

Base predictions become the ensembler's single input ``x`` (one column per model output,
in the order given). Rows are aligned by /metadata/id against a reference file (the
targets file when training, the first prediction file when applying).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kmodel import predict as predict_mod
from kmodel import provenance, record
from kmodel import train as train_mod
from kmodel._fs import check_input_file, guard_output
from kmodel.defaults import COMPOSE_BATCH_SIZE, TARGET_NAME
from kmodel.errors import (
    IdAlignmentError,
    InputSchemaError,
    MixedInputsError,
    NotFiniteError,
    TargetLengthError,
)
from kmodel.io import hdf5
from kmodel.launch import Progress
from kmodel.record import PredictionRecord
from kmodel.registry import Model, Registry
from kmodel.weights import RECORD, WEIGHTS_MANIFEST, Weights


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
    """Row indices into ``ids`` that put them in ``reference`` order, or a clear error."""
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
class Sources:
    """Prediction files as the ensembler's input columns, aligned to a reference's ids."""

    columns: list[tuple[Path, str]]  # (file, 1-D dataset), in order
    labels: list[str]  # each column's origin (file:/dataset), for error messages
    names: list[str]  # what each file holds, ``model:output,...``
    dtype: str  # float64 if any column is (converted per batch in the runner)
    rows: int


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


def _count(path: Path) -> int:
    """Rows of a file (its ids), or a clear error."""
    try:
        rows = hdf5.count_ids(path)
    except hdf5.LayoutError as e:
        raise InputSchemaError(f"{path}: {e}; is it a kmodel file?") from None
    except (OSError, KeyError, TypeError, RuntimeError) as e:
        raise InputSchemaError(f"{path}: not a kmodel HDF5 file ({e})") from None
    if rows == 0:
        raise IdAlignmentError(f"{path}: no rows; predict on a non-empty input")
    return rows


def sources(preds: Sequence[Path], reference: Path, tmp: Path, *,
            allow_mixed_inputs: bool = False) -> Sources:
    """Check the prediction files and line their columns up with ``reference``'s ids.

    The common case (every file holds the reference's ids in its order, checked a block at
    a time) reads nothing else: the ensembler then reads the files' own datasets through a
    virtual file. A file in another order, or with rows of more than one dimension, is
    copied to ``tmp`` in the reference's order first (which needs its ids in memory).
    """
    for path in preds:
        check_input_file(path)  # before anything opens it (a FIFO would block)
    if not allow_mixed_inputs:
        check_same_input(preds)
    rows = _count(reference)
    columns: list[tuple[Path, str]] = []
    labels: list[str] = []
    names, wide = [], False
    for k, path in enumerate(preds):
        layout = _layout(path)
        _count(path)
        found = _columns(path, layout, reference, tmp / f"aligned-{k}.h5")
        columns += found
        labels += [f"{path}:/{name}" for _, name in found]
        wide |= any(dtype.itemsize > 4 or dtype.kind != "f" for _, _, dtype in layout)
        outputs = ",".join(name.split("/")[-1] for name, _, _ in layout)
        names.append(f"{_record(path).model or path.stem}:{outputs}")
    return Sources(columns, labels, names, "float64" if wide else "float32", rows)


def _columns(path: Path, layout: list[tuple[str, tuple[int, ...], np.dtype]],
             reference: Path, copy: Path) -> list[tuple[Path, str]]:
    """The file's prediction columns as (file, 1-D dataset), in ``reference``'s row order:
    its own datasets when they are, else those of ``copy``, written in that order."""
    same = _same_ids(reference, path)
    if same and all(len(shape) == 1 for _, shape, _ in layout):
        return [(path, name) for name, _, _ in layout]
    # another order, or several values a row: a copy, in order, one column each
    order = None if same else align(hdf5.read_ids(reference), hdf5.read_ids(path), path)
    return [(copy, name) for name in hdf5.write_aligned(path, copy, order)]


def _same_ids(a: Path, b: Path) -> bool:
    """Both files hold the same ids in the same order (probed only where both records say
    they are whole predictions of the same rows of one input)."""
    return hdf5.same_ids(a, b, trusted=_record(a).same_rows_as(_record(b)))


def train(registry: Registry, ensembler: str, preds: Sequence[Path], targets: Path,
          weights_out: Path, *, target_name: str = TARGET_NAME,
          allow_mixed_inputs: bool = False,
          progress: Progress | None = None) -> Weights:
    """Fit the ensembler on stored predictions aligned to the targets' ids.

    Nothing is stacked in this process: the ensembler's runner reads the prediction files'
    columns through a small virtual HDF5 file, into its training matrix.
    """
    for path in [*preds, targets]:  # regular, readable files (a FIFO would block)
        check_input_file(path)
    guard_output(weights_out, [*preds, targets], folder=True)
    targets_of(targets, target_name)  # there, numbers, finite (before any env starts)
    model = registry.model(ensembler)
    made = provenance.of_model(registry, model, None)
    read = provenance.upstream([*preds, targets])
    with tempfile.TemporaryDirectory(prefix="kmodel-compose-") as tmp:
        found = sources(preds, targets, Path(tmp), allow_mixed_inputs=allow_mixed_inputs)
        _takes(model, found)
        table = Path(tmp) / "train.h5"
        hdf5.write_virtual(table, found.rows, found.columns, found.dtype, ids_from=targets,
                           extra={f"targets/{target_name}": (targets,
                                                              f"targets/{target_name}")})
        kept = provenance.folder_record(made, read, found.names)
        return train_mod.train(registry, ensembler, table, weights_out, targets=target_name,
                               extra={RECORD: kept.text()}, progress=progress,
                               inputs=(*preds, targets), columns=found.labels)


def _takes(model: Model, found: Sources) -> None:
    """The ensembler's one input must take a row of every prediction file's columns."""
    inputs = model.spec.inputs
    width = len(found.columns)
    shape = tuple(inputs[0].shape) if len(inputs) == 1 else None
    if shape is None or shape not in ((width,), (None,)):
        want = f"x of shape {list(shape)}" if shape is not None else f"{len(inputs)} inputs"
        raise InputSchemaError(f"ensembler {model.name!r} takes {want}; the prediction files "
                               f"give {width} column(s) ({', '.join(found.names)}): choose an "
                               "ensembler whose one input is [N] or [null] for N columns")


def _trained_on(weights: Weights, default: list[str]) -> list[str]:
    """The models (and outputs) a trained ensembler takes, in order (as recorded)."""
    kept = provenance.read_folder_record(weights.folder)
    return kept.sources if kept is not None and kept.sources is not None else default


def apply(registry: Registry, ensembler: str, preds: Sequence[Path], weights: Path,
          output: Path, *, allow_mixed_inputs: bool = False,
          progress: Progress | None = None) -> Path:
    """Run the trained ensembler on stored predictions; write ``output`` atomically.

    Streamed: the ensembler's runner reads the prediction files batch by batch through a
    small virtual HDF5 file (rows aligned to the first file's ids)."""
    for path in preds:
        check_input_file(path)
    w = Weights.from_folder(weights)
    guard_output(output, [*preds, *w.files, w.folder / WEIGHTS_MANIFEST,
                          *registry.owned_files()],
                 siblings=(".partial", ".lock"), replaceable=hdf5.is_prediction)
    with tempfile.TemporaryDirectory(prefix="kmodel-compose-") as tmp:
        found = sources(preds, preds[0], Path(tmp), allow_mixed_inputs=allow_mixed_inputs)
        trained_on = _trained_on(w, found.names)
        if found.names != trained_on:
            raise InputSchemaError(f"{weights} was trained on {', '.join(trained_on)} (in this "
                                   f"order), got {', '.join(found.names)}; pass the same "
                                   "models' predictions in the training order")
        _takes(registry.model(ensembler), found)
        table = Path(tmp) / "apply.h5"
        hdf5.write_virtual(table, found.rows, found.columns, found.dtype, ids_from=preds[0])
        return predict_mod.predict(registry, ensembler, table, output, weights=w,
                                   progress=progress, upstream=preds, columns=found.labels,
                                   batch_size=COMPOSE_BATCH_SIZE)


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
