"""Tasks and their metrics, as scikit-learn defines them, in numpy.

A composition's task is ``binary``, ``multiclass`` or ``regression``: given (``task:``) or
inferred from the targets. Predictions take one form per task: P(y = the larger class) per
row for binary, a probability per class (columns in the order of the sorted class labels)
for multiclass, the value for regression. Each metric equals scikit-learn's on the same
arrays (tests/test_metrics.py compares them); a prediction a metric cannot judge (values
outside [0, 1], rows that do not sum to one, the wrong number of columns) is a
``PredictionError``, never a number.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

Task = Literal["binary", "multiclass", "regression"]
TASKS: tuple[Task, ...] = ("binary", "multiclass", "regression")
#: the metrics of each task, in the order tables show them
METRICS: dict[Task, tuple[str, ...]] = {
    "binary": ("log_loss", "roc_auc", "brier", "accuracy"),
    "multiclass": ("log_loss", "accuracy", "roc_auc_ovr"),
    "regression": ("rmse", "mae", "r2"),
}
#: what ranks models (the first of METRICS): lower is better
PRIMARY: dict[Task, str] = {task: names[0] for task, names in METRICS.items()}
LOWER_IS_BETTER = {"log_loss", "brier", "rmse", "mae"}
#: integer targets with more distinct values than this are taken for a regression
MAX_CLASSES = 20
FLOAT64 = np.dtype(np.float64)


class PredictionError(ValueError):
    """Predictions that a task's metrics cannot judge; says what is wrong with them."""


def infer_task(y: np.ndarray) -> Task:
    """The task of targets ``y``: two values -> binary; whole numbers with at most
    MAX_CLASSES values -> multiclass; anything else -> regression."""
    y = np.asarray(y)
    values = np.unique(y)
    if y.dtype.kind == "b" or len(values) <= 2:
        return "binary"
    if y.dtype.kind in "iu" or (y.dtype.kind == "f" and np.all(values == np.round(values))):
        return "multiclass" if len(values) <= MAX_CLASSES else "regression"
    return "regression"


def as_task(name: str) -> Task:
    """A task's name, checked."""
    for task in TASKS:
        if name == task:
            return task
    raise ValueError(f"task {name!r} is not one of {', '.join(TASKS)}")


def classes_of(y: np.ndarray) -> np.ndarray:
    """The class labels of classification targets: their sorted distinct values."""
    return np.unique(np.asarray(y))


def _check_proba(p: np.ndarray) -> None:
    if not np.all(np.isfinite(p)):
        raise PredictionError("holds NaN or inf")
    if p.size and (p.min() < 0 or p.max() > 1):
        raise PredictionError(f"holds values outside [0, 1] ({p.min():.4g} to {p.max():.4g}), "
                              "so not probabilities")


def as_prediction(task: Task, columns: np.ndarray, n_classes: int) -> np.ndarray:
    """A model's stored prediction (rows x columns) in the task's form, or PredictionError:
    binary takes one column, P(y = the larger class), or two, [P(y=0), P(y=1)] (Kipoi's);
    multiclass one column per class; regression one column."""
    cols = np.asarray(columns, np.float64).reshape(len(columns), -1)
    width = cols.shape[1]
    if task == "regression":
        if width != 1:
            raise PredictionError(f"has {width} values a row; a regression takes one")
        if not np.all(np.isfinite(cols)):
            raise PredictionError("holds NaN or inf")
        return cols[:, 0]
    _check_proba(cols)
    if task == "binary":
        if width not in (1, 2):
            raise PredictionError(f"has {width} values a row; a binary task takes P(y=1), "
                                  "or [P(y=0), P(y=1)]")
        return cols[:, -1]
    if width != n_classes:
        raise PredictionError(f"has {width} values a row; this multiclass task has "
                              f"{n_classes} classes: give one probability per class")
    off = np.abs(cols.sum(axis=1) - 1)
    if len(off) and off.max() > 1e-3:
        raise PredictionError(f"has rows that do not sum to one (off by up to {off.max():.3g}); "
                              "give class probabilities")
    return cols


def roc_auc(positive: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve (rank statistic, ties averaged); None with one class."""
    y = np.asarray(positive).astype(bool)
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _eps(stored: np.dtype) -> float:
    """scikit-learn clips probabilities at the machine precision of their dtype."""
    return float(np.finfo(stored if np.dtype(stored).kind == "f" else np.float64).eps)


def binary(y: np.ndarray, p: np.ndarray, classes: Sequence[object],
           stored: np.dtype = FLOAT64) -> dict[str, float | None]:
    """log_loss, roc_auc, brier, accuracy of P(y = classes[-1]) ``p``."""
    positive = np.asarray(y) == classes[-1]
    eps = _eps(stored)
    q = np.clip(p, eps, 1 - eps)
    return {"log_loss": float(-np.mean(np.where(positive, np.log(q), np.log(1 - q)))),
            "roc_auc": roc_auc(positive, p),
            "brier": float(np.mean((positive - p) ** 2)),
            "accuracy": float(np.mean((p > 0.5) == positive))}


def multiclass(y: np.ndarray, proba: np.ndarray, classes: Sequence[object],
               stored: np.dtype = FLOAT64) -> dict[str, float | None]:
    """log_loss, accuracy, macro one-vs-rest roc_auc (None unless every class occurs)."""
    index = np.searchsorted(np.asarray(classes), np.asarray(y))
    eps = _eps(stored)
    picked = np.clip(proba[np.arange(len(index)), index], eps, 1 - eps)
    aucs = [roc_auc(index == k, proba[:, k]) for k in range(len(classes))]
    return {"log_loss": float(-np.mean(np.log(picked))),
            "accuracy": float(np.mean(np.argmax(proba, axis=1) == index)),
            "roc_auc_ovr": None if any(a is None for a in aucs) else float(
                np.mean(np.asarray(aucs, np.float64)))}


def regression(y: np.ndarray, v: np.ndarray) -> dict[str, float | None]:
    """rmse, mae, r2 (None when the targets are constant)."""
    y = np.asarray(y, np.float64)
    err = y - v
    total = float(np.sum((y - y.mean()) ** 2))
    return {"rmse": float(np.sqrt(np.mean(err ** 2))), "mae": float(np.mean(np.abs(err))),
            "r2": None if total == 0 else 1 - float(np.sum(err ** 2)) / total}


def score(task: Task, y: np.ndarray, prediction: np.ndarray, classes: Sequence[object],
          stored: np.dtype = FLOAT64) -> dict[str, float | None]:
    """Every metric of ``task`` for a prediction in the task's form (``as_prediction``);
    ``stored``: the dtype the prediction was stored in (it sets the clipping epsilon)."""
    if task == "binary":
        return binary(y, prediction, classes, stored)
    if task == "multiclass":
        return multiclass(y, prediction, classes, stored)
    return regression(y, prediction)


def better(metric: str, a: float, b: float) -> bool:
    """``a`` is a better value of ``metric`` than ``b``."""
    return a < b if metric in LOWER_IS_BETTER else a > b


__all__ = ["LOWER_IS_BETTER", "MAX_CLASSES", "METRICS", "PRIMARY", "TASKS", "PredictionError",
           "Task", "as_prediction", "as_task", "better", "classes_of", "infer_task", "roc_auc",
           "score"]
