"""Every metric kmodel prints equals scikit-learn's on the same arrays (float32 as stored,
ties, a class missing), and what a metric cannot judge is refused."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as sk

from kmodel import metrics
from kmodel.metrics import PredictionError

RNG = np.random.default_rng(0)


def _binary(n: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    y = RNG.integers(0, 2, n)
    p = 1 / (1 + np.exp(-(RNG.normal(size=n) + 1.5 * y)))
    p = np.round(p, 1) if ties else p  # rounded: plenty of ties
    p[:3] = [0.0, 1.0, 0.5]  # the clipping and the threshold
    return y, p.astype(np.float32)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("labels", [(0, 1), (3, 7)])
def test_binary_metrics_equal_scikit_learns(ties: bool, labels: tuple[int, int]) -> None:
    y01, p = _binary(500, ties)
    y = np.where(y01 == 1, labels[1], labels[0])
    got = metrics.binary(y, p.astype(np.float64), labels, stored=p.dtype)
    assert got["log_loss"] == pytest.approx(sk.log_loss(y, p, labels=list(labels)), rel=1e-6)
    assert got["roc_auc"] == pytest.approx(sk.roc_auc_score(y, p), rel=1e-12)
    assert got["brier"] == pytest.approx(sk.brier_score_loss(y, p, pos_label=labels[1]),
                                         rel=1e-6)
    predicted = np.where(p > 0.5, labels[1], labels[0])  # what predict_proba's argmax gives
    assert got["accuracy"] == pytest.approx(sk.accuracy_score(y, predicted))


def test_multiclass_metrics_equal_scikit_learns() -> None:
    k, n = 4, 600
    y = RNG.integers(0, k, n) * 10  # labels 0, 10, 20, 30
    logits = RNG.normal(size=(n, k)) + 2.0 * np.eye(k)[y // 10]
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    proba = proba.astype(np.float32)
    classes = [0, 10, 20, 30]
    got = metrics.multiclass(y, metrics.as_prediction("multiclass", proba, k), classes,
                             stored=proba.dtype)
    assert got["log_loss"] == pytest.approx(sk.log_loss(y, proba, labels=classes), rel=1e-5)
    assert got["accuracy"] == pytest.approx(sk.accuracy_score(y, np.array(classes)[
        proba.argmax(axis=1)]))
    want = sk.roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=classes)
    assert got["roc_auc_ovr"] == pytest.approx(want, rel=1e-6)
    missing = metrics.multiclass(y[y != 30], proba[y != 30], classes)
    assert missing["roc_auc_ovr"] is None  # scikit-learn refuses it: no number


def test_regression_metrics_equal_scikit_learns() -> None:
    y = RNG.normal(size=300) * 5 + 2
    v = (y + RNG.normal(size=300)).astype(np.float32).astype(np.float64)
    got = metrics.regression(y, v)
    assert got["rmse"] == pytest.approx(sk.root_mean_squared_error(y, v), rel=1e-12)
    assert got["mae"] == pytest.approx(sk.mean_absolute_error(y, v), rel=1e-12)
    assert got["r2"] == pytest.approx(sk.r2_score(y, v), rel=1e-12)
    assert metrics.regression(np.ones(5), np.zeros(5))["r2"] is None


def test_tasks_are_inferred_from_the_targets() -> None:
    assert metrics.infer_task(np.array([0, 1, 1, 0])) == "binary"
    assert metrics.infer_task(np.array([2.0, 5.0, 5.0])) == "binary"
    assert metrics.infer_task(np.arange(300) % 7) == "multiclass"
    assert metrics.infer_task(np.arange(300) % 7 * 1.0) == "multiclass"
    assert metrics.infer_task(np.arange(300)) == "regression"  # counts: many values
    assert metrics.infer_task(np.linspace(0, 1, 50)) == "regression"


@pytest.mark.parametrize(("task", "columns", "why"), [
    ("binary", np.full((4, 3), 1 / 3), "3 values a row"),
    ("binary", np.array([[0.2], [1.5], [0.1], [0.0]]), r"outside \[0, 1\]"),
    ("binary", np.array([[0.2], [np.nan], [0.1], [0.0]]), "NaN"),
    ("multiclass", np.full((4, 1), 0.5), "1 values a row; this multiclass task has 3"),
    ("multiclass", np.full((4, 3), 0.5), "do not sum to one"),
    ("regression", np.zeros((4, 2)), "2 values a row"),
])
def test_predictions_a_metric_cannot_judge_are_refused(task: metrics.Task, columns: np.ndarray,
                                                       why: str) -> None:
    with pytest.raises(PredictionError, match=why):
        metrics.as_prediction(task, columns, 3)


def test_kipoi_two_column_binary_predictions_score_the_positive_column() -> None:
    y, p = _binary(200, False)
    two = np.column_stack([1 - p, p])
    assert metrics.as_prediction("binary", two, 2) == pytest.approx(p)
    assert metrics.binary(y, metrics.as_prediction("binary", two, 2), [0, 1])["roc_auc"] == \
        pytest.approx(sk.roc_auc_score(y, p))
