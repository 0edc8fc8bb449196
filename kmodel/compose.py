"""The composer: align stored predictions by id, train the ensembler, apply it, score.

Base predictions become the ensembler's single input ``x`` (one column per model output,
in the order given). Rows are aligned by /metadata/id against a reference file (the
targets file when training, the first prediction file when applying).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kmodel import predict as predict_mod
from kmodel.errors import (
    IdAlignmentError,
    InputMissingError,
    InputSchemaError,
    TargetLengthError,
)
from kmodel.io import hdf5
from kmodel.predict import Progress, Weights
from kmodel.registry import Registry

#: in the ensembler's weights folder: the models (and outputs) it was trained on, in order
SOURCES = "sources.json"


def _read(path: Path, group: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    if not path.is_file():
        raise InputMissingError(path)
    try:
        return hdf5.read_group(path, group)
    except OSError as e:
        raise InputSchemaError(f"{path}: not an HDF5 file ({e}); give kmodel "
                               "prediction or input files") from None
    except KeyError:
        raise IdAlignmentError(f"{path}: no /{group} or /metadata/id; is it a kmodel "
                               f"{'prediction' if group == 'preds' else 'input'} file?") from None


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
        first = reference[missing][0].decode(errors="replace")
        raise IdAlignmentError(f"{path}: {int(missing.sum())} id(s) of the reference file are "
                               f"missing, e.g. {first!r}; predict on the same input file")
    if len(ids) != len(reference):
        raise IdAlignmentError(f"{path}: {len(ids) - len(reference)} id(s) not in the "
                               "reference file; predict on the same input file")
    return found


def stack(preds: Sequence[Path], reference: np.ndarray | None = None,
          ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Columns of all prediction files, aligned to ``reference`` ids (default: the first's),
    and what each file holds (``model:output,...``), in order."""
    columns, sources = [], []
    for path in preds:
        arrays, ids = _read(path, "preds")
        if reference is None:
            reference = ids
        rows = align(reference, ids, path)
        for name in sorted(arrays):
            columns.append(arrays[name][rows].reshape(len(rows), -1).astype(np.float32))
        model = hdf5.read_attrs(path).get("model", path.stem)
        sources.append(f"{model}:{','.join(sorted(arrays))}")
    assert reference is not None
    return np.concatenate(columns, axis=1), reference, sources


def _targets(path: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    arrays, ids = _read(path, "targets")
    if name not in arrays:
        raise TargetLengthError(f"{path}: no /targets/{name} (found {sorted(arrays)}); "
                                "set the composition's targets: to an existing name")
    y = arrays[name]
    if len(y) != len(ids):
        raise TargetLengthError(f"{path}: /targets/{name} has {len(y)} rows but /metadata/id "
                                f"has {len(ids)}; they must match")
    return y, ids


def train(registry: Registry, ensembler: str, preds: Sequence[Path], targets: Path,
          weights_out: Path, *, target_name: str = "y",
          progress: Progress | None = None) -> Weights:
    """Fit the ensembler on stored predictions aligned to the targets' ids."""
    y, ids = _targets(targets, target_name)
    x, _, sources = stack(preds, ids)
    with tempfile.TemporaryDirectory(prefix="kmodel-compose-") as tmp:
        table = Path(tmp) / "train.h5"
        hdf5.write_table(table, {"inputs": {"x": x}, "targets": {target_name: y}}, ids)
        return predict_mod.train(registry, ensembler, table, target_name, weights_out,
                                 extra={SOURCES: json.dumps(sources, indent=2) + "\n"},
                                 progress=progress)


def apply(registry: Registry, ensembler: str, preds: Sequence[Path], weights: Path,
          output: Path, *, progress: Progress | None = None) -> Path:
    """Run the trained ensembler on stored predictions; write ``output`` atomically."""
    w = Weights.from_folder(weights)
    x, ids, sources = stack(preds)
    trained_on = json.loads((weights / SOURCES).read_text()) if SOURCES in w.sha256 else sources
    if sources != trained_on:
        raise InputSchemaError(f"{weights} was trained on {', '.join(trained_on)} (in this "
                               f"order), got {', '.join(sources)}; pass the same models' "
                               "predictions in the training order")
    with tempfile.TemporaryDirectory(prefix="kmodel-compose-") as tmp:
        table = Path(tmp) / "apply.h5"
        hdf5.write_table(table, {"inputs": {"x": x}}, ids)
        return predict_mod.predict(registry, ensembler, table, output, weights=w,
                                   progress=progress)


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (rank statistic, ties averaged)."""
    y = np.asarray(y).astype(bool)
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def score(preds: dict[str, Path], targets: Path, target_name: str = "y",
          ) -> dict[str, dict[str, float]]:
    """ROC AUC and accuracy (threshold 0.5) of each prediction file against the targets."""
    y, ids = _targets(targets, target_name)
    out = {}
    for label, path in preds.items():
        x, _, _ = stack([path], ids)
        p = x[:, 0]
        out[label] = {"auc": round(roc_auc(y, p), 4),
                      "accuracy": round(float(np.mean((p > 0.5) == y.astype(bool))), 4),
                      "rows": len(y)}
    return out
