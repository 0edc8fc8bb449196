"""Scores: how well stored predictions match the targets, and the score table's one format.

A score table maps a label (a model, or ``ensemble``) to its scores; written as a ``scores``
document (kmodel/formats.py), read back by ``read`` (the CLI, `kmodel run` and `kmodel
status` all use it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kmodel import formats
from kmodel._fs import guard_output
from kmodel.compose import first_column, targets_of
from kmodel.defaults import TARGET_NAME
from kmodel.errors import KmodelError

Table = dict[str, dict[str, Any]]


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (rank statistic, ties averaged)."""
    y = np.asarray(y).astype(bool)
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")  # undefined with one class
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _fraction(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1


def _row_problem(row: Any) -> bool:
    return not (isinstance(row, dict) and (row.get("auc") is None or _fraction(row["auc"]))
                and _fraction(row.get("accuracy")) and isinstance(row.get("rows"), int))


def _table(path: Path) -> Any:
    """The table part of a score file, unchecked. Version 0 (an older kmodel's) is the bare
    mapping of labels; version 1 holds it under ``scores``."""
    version, body = formats.read(path, "scores")
    return body if version == 0 else body.get("scores")


def problem(path: Path, labels: list[str] | None = None) -> str | None:
    """Why a scores file is not a score table (of ``labels``, when given), or None."""
    try:
        table = _table(path)
    except (OSError, KmodelError):
        return "unreadable"
    if not isinstance(table, dict) or (labels is not None and sorted(table) != sorted(labels)):
        return f"not a score table of {', '.join(labels or ['labels'])}"
    if bad := next((label for label, row in table.items() if _row_problem(row)), None):
        return f"its scores of {bad} are not numbers as `kmodel score` writes them"
    return None


def read(path: Path) -> Table:
    """The score table at ``path``; KmodelError (or OSError) if it is not one."""
    if why := problem(path):
        from kmodel.errors import InputSchemaError

        raise InputSchemaError(f"{path}: {why}; score again")
    table: Table = _table(path)
    return table


def _is_table(path: Path) -> bool:
    read(path)
    return True


def score(preds: dict[str, Path], targets: Path, target_name: str = TARGET_NAME,
          output: Path | None = None) -> Table:
    """ROC AUC and accuracy (threshold 0.5) of each prediction file against the targets;
    also written to ``output`` if given. AUC is None when the targets hold one class."""
    if output is not None:
        guard_output(output, [targets, *preds.values()], replaceable=_is_table)
    y, _ = targets_of(targets, target_name)
    out: Table = {}
    for label, path in preds.items():
        p = first_column(path, targets)
        auc = roc_auc(y, p)
        out[label] = {"auc": None if np.isnan(auc) else round(auc, 4),
                      "accuracy": round(float(np.mean((p > 0.5) == y.astype(bool))), 4),
                      "rows": len(y)}
    if output is not None:
        formats.write(output, "scores", {"scores": out})
    return out


__all__ = ["Table", "problem", "read", "roc_auc", "score"]
