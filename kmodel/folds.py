"""Cross-fitting: the train split cut into K folds, and out-of-fold predictions gathered back.

``make`` writes, for each fold k, the rows outside it (``fold-k-fit.h5``, what a base model
is trained on) and the rows in it (``fold-k-holdout.h5``, what that model then predicts).
Folds are stratified by class for classification (as scikit-learn's StratifiedKFold) and
depend only on the ids, the seed and K: the same rows in another order give the same folds.

``gather`` puts each fold's holdout predictions together in the train split's row order:
every row predicted exactly once, by a model that was not trained on it (checked against
each fold's weights' record of its training rows). That file is the base model's level-one
training data (``RESULTS/NAME/preds/MODEL/train.h5``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kmodel import checksums, metrics, provenance, record
from kmodel._fs import atomic_path, cached_sha256, check_input_file, guard_output
from kmodel.compose import targets_of
from kmodel.errors import IdAlignmentError, InputSchemaError, TaskError, TrainingOverlapError
from kmodel.io import hdf5
from kmodel.record import PredictionRecord

FIT, HOLDOUT = "fit", "holdout"


def fold_file(folder: Path, k: int, part: str) -> Path:
    return folder / f"fold-{k}-{part}.h5"


def assign(ids: np.ndarray, y: np.ndarray, folds: int, seed: int,
           stratified: bool) -> np.ndarray:
    """The fold of each row: rows are put in id order, shuffled with ``seed``, then dealt
    to the folds in turn (class by class when ``stratified``), so fold sizes differ by at
    most one (per class)."""
    by_id = np.argsort(ids, kind="stable")
    rng = np.random.default_rng(seed)
    fold = np.empty(len(ids), np.int64)
    groups = [by_id[np.asarray(y)[by_id] == c] for c in np.unique(y)] if stratified \
        else [by_id]
    start = 0
    for rows in groups:
        shuffled = rows[rng.permutation(len(rows))]
        fold[shuffled] = (start + np.arange(len(rows))) % folds
        start += len(rows)  # the next class continues where this one ended
    return fold


def make(train: Path, folder: Path, *, folds: int, seed: int, target_name: str,
         task: str | None = None) -> list[Path]:
    """Write the fit and holdout files of every fold of ``train`` into ``folder``."""
    check_input_file(train)
    if folds < 2:
        raise InputSchemaError(f"folds: {folds}; cross-fitting needs at least 2")
    y, ids = targets_of(train, target_name)
    kind = metrics.as_task(task) if task else metrics.infer_task(y)
    if len(ids) < folds:
        raise TaskError(f"{train}: {len(ids)} rows cannot make {folds} folds; give fewer "
                        "folds (stacking: {folds: N}) or more rows")
    fold = assign(ids, y, folds, seed, stratified=kind != "regression")
    try:
        groups = {g: hdf5.read_group(train, g)[0] for g in ("inputs", "targets")}
    except (OSError, hdf5.LayoutError) as e:
        raise InputSchemaError(f"{train}: {e}") from None
    stored = hdf5.read_group(train, "targets")[1]
    attrs = {"dataset": "fold", "folds": folds, "seed": seed, "task": kind,
             "source_sha256": cached_sha256(train)}
    written = []
    for k in range(folds):
        for part, rows in ((FIT, fold != k), (HOLDOUT, fold == k)):
            path = fold_file(folder, k, part)
            guard_output(path, [train], replaceable=hdf5.is_example_data)
            with atomic_path(path) as tmp:
                hdf5.write_table(tmp, {g: {n: a[rows] for n, a in arrays.items()}
                                       for g, arrays in groups.items()},
                                 stored[rows], attrs={**attrs, "fold": k, "part": part})
            written.append(path)
    return written


def _fold_rows(path: Path) -> tuple[PredictionRecord, dict[str, np.ndarray], np.ndarray]:
    """A fold's holdout predictions: its record, datasets and ids, checked whole and
    predicted by weights that were not trained on those rows."""
    check_input_file(path)
    try:
        found = record.read(path)
        arrays, ids = hdf5.read_group(path, "preds")
    except (OSError, hdf5.LayoutError) as e:
        raise InputSchemaError(f"{path}: not a kmodel prediction file ({e})") from None
    ids = hdf5.as_ids(ids)
    if not found.known or not found.complete:
        raise InputSchemaError(f"{path}: not a whole prediction kmodel wrote; predict that "
                               "fold again")
    checksums.check(path)
    kept = provenance.read_folder_record(found.weights_folder) if found.weights_folder \
        else None
    if kept is None or kept.trained_on is None:
        raise InputSchemaError(f"{path}: its weights ({found.weights_dir or 'none'}) record "
                               "no training rows, so nothing shows these rows are out of "
                               "fold; predict with weights `kmodel train` wrote")
    count, first = kept.trained_on.overlap(ids)
    if count:
        raise TrainingOverlapError(f"{path}: model {found.model!r} predicted {count} row(s) "
                                   f"its weights were trained on (e.g. id {first!r}); these "
                                   "are not out-of-fold predictions: fit each fold on the "
                                   "rows outside it")
    return found, arrays, ids


def gather(fold_preds: Sequence[Path], reference: Path, output: Path) -> Path:
    """Write ``output``: the folds' holdout predictions in ``reference``'s row order."""
    from kmodel.compose import align

    guard_output(output, [*fold_preds, reference], siblings=(".lock",),
                 replaceable=hdf5.is_prediction)
    parts = [_fold_rows(p) for p in fold_preds]
    first = parts[0][0]
    for (found, _, _), path in zip(parts[1:], fold_preds[1:], strict=True):
        if key := found.first_difference(first, ("model", "spec_sha256", "code_sha256",
                                                 "lock_sha256", "kmodel_version")):
            raise InputSchemaError(f"{path} and {fold_preds[0]} differ in {key}; gather the "
                                   "folds of one model")
    names = sorted(parts[0][1])
    if any(sorted(a) != names for _, a, _ in parts):
        raise InputSchemaError(f"{fold_preds[0]}: the folds hold different outputs; predict "
                               "every fold with the same model")
    ids = np.concatenate([i for _, _, i in parts])
    reference_ids = hdf5.read_ids(reference)
    try:
        order = align(reference_ids, ids, Path(", ".join(map(str, fold_preds))))
    except IdAlignmentError as e:
        raise IdAlignmentError(f"the folds do not hold each row of {reference} once: "
                               f"{e}") from None
    arrays = {n: np.concatenate([a[n] for _, a, _ in parts])[order] for n in names}
    made = {**first.made, "weights_sha256": ""}  # each fold has weights of its own
    gathered = PredictionRecord(
        model=first.model, model_version=first.model_version, made=made,
        env_key=first.env_key, batch_size=first.batch_size, weights_dir="", rows_start=0,
        rows_stop=len(order), input_rows=len(order),
        input_signature=f"{record.relative(reference, output.parent)}|",
        input_sha256=cached_sha256(reference),
        upstream_sha256=provenance.upstream(fold_preds, output.parent), folds=len(fold_preds),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    classes = {n: hdf5.dataset_attrs(fold_preds[0], f"preds/{n}").get("classes") for n in names}
    with atomic_path(output) as tmp:
        hdf5.write_table(tmp, {"preds": arrays}, reference_ids,
                         attrs={**gathered.to_attrs(), hdf5.ROWS_DONE: len(order),
                                hdf5.COMPLETE: True})
        for name, value in classes.items():
            if value is not None:
                hdf5.set_attrs(tmp, {"classes": json.dumps(json.loads(value))},
                               dataset=f"preds/{name}")
    return output


__all__ = ["FIT", "HOLDOUT", "assign", "fold_file", "gather", "make"]
