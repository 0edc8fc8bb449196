"""A picture of the scores, next to them: an SVG (no plotting library needed; any browser
shows it). ROC curves for a binary task, reliability (calibration) curves for multiclass,
predicted against true values for a regression; one line (or set of points) per label."""

from __future__ import annotations

from html import escape
from pathlib import Path

import numpy as np

from kmodel._fs import atomic_write_text
from kmodel.compose import Task

SIZE, PAD = 420, 48
COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]


def _roc(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-p, kind="stable")
    hits = y[order].astype(float)
    tpr = np.concatenate([[0], np.cumsum(hits) / max(hits.sum(), 1)])
    fpr = np.concatenate([[0], np.cumsum(1 - hits) / max((1 - hits).sum(), 1)])
    return fpr, tpr


def _reliability(index: np.ndarray, proba: np.ndarray, bins: int = 10
                 ) -> tuple[np.ndarray, np.ndarray]:
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == index
    edges = np.minimum((confidence * bins).astype(int), bins - 1)
    xs, ys = [], []
    for b in range(bins):
        here = edges == b
        if here.any():
            xs.append(confidence[here].mean())
            ys.append(correct[here].mean())
    return np.array(xs), np.array(ys)


def _path(xs: np.ndarray, ys: np.ndarray, lo: tuple[float, float], hi: tuple[float, float]
          ) -> str:
    sx = PAD + (xs - lo[0]) / (hi[0] - lo[0] or 1) * (SIZE - 2 * PAD)
    sy = SIZE - PAD - (ys - lo[1]) / (hi[1] - lo[1] or 1) * (SIZE - 2 * PAD)
    return " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(sx, sy, strict=True))


def write(path: Path, task: Task, y: np.ndarray, predictions: dict[str, np.ndarray]) -> None:
    """Draw the curves of every prediction (rows in ``y``'s order) into ``path``."""
    lines, title, axes = [], "", ("", "")
    lo, hi = (0.0, 0.0), (1.0, 1.0)
    if task.task == "regression":
        values = np.concatenate([y, *predictions.values()])
        lo = (float(values.min()), float(values.min()))
        hi = (float(values.max()), float(values.max()))
        title, axes = "predicted against true (test)", ("true", "predicted")
    elif task.task == "binary":
        title, axes = "ROC curves (test)", ("false positive rate", "true positive rate")
    else:
        title, axes = "reliability (test): accuracy by confidence", ("confidence",
                                                                     "accuracy")
    for k, (label, pred) in enumerate(predictions.items()):
        colour = COLOURS[k % len(COLOURS)]
        if task.task == "regression":
            pts = _path(y.astype(float), pred, lo, hi).split()
            dots = "".join(f'<circle cx="{p.split(",")[0]}" cy="{p.split(",")[1]}" r="1.6" '
                           f'fill="{colour}" fill-opacity="0.5"/>' for p in pts[:5000])
            lines.append(dots)
        elif task.task == "binary":
            fpr, tpr = _roc(y == task.classes[-1], pred)
            lines.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" '
                         f'points="{_path(fpr, tpr, lo, hi)}"/>')
        else:
            xs, ys = _reliability(np.searchsorted(np.asarray(task.classes), y), pred)
            lines.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" '
                         f'points="{_path(xs, ys, lo, hi)}"/>')
        lines.append(f'<text x="{SIZE - PAD + 8}" y="{PAD + 16 * k}" font-size="12" '
                     f'fill="{colour}">{escape(label)}</text>')
    diagonal = _path(np.array([lo[0], hi[0]]), np.array([lo[1], hi[1]]), lo, hi)
    body = "\n".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{SIZE + 140}" height="{SIZE}" '
        f'font-family="sans-serif"><!-- kmodel: {escape(title)} -->',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{PAD}" y="24" font-size="14">{escape(title)}</text>',
        f'<rect x="{PAD}" y="{PAD}" width="{SIZE - 2 * PAD}" height="{SIZE - 2 * PAD}" '
        'fill="none" stroke="#999"/>',
        f'<polyline fill="none" stroke="#bbb" stroke-dasharray="4 4" points="{diagonal}"/>',
        f'<text x="{SIZE / 2}" y="{SIZE - 12}" font-size="12" text-anchor="middle">'
        f'{escape(axes[0])}</text>',
        f'<text x="14" y="{SIZE / 2}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 14 {SIZE / 2})">{escape(axes[1])}</text>',
        f'<text x="{PAD}" y="{SIZE - PAD + 16}" font-size="10">{lo[0]:.3g}</text>',
        f'<text x="{SIZE - PAD}" y="{SIZE - PAD + 16}" font-size="10" text-anchor="end">'
        f'{hi[0]:.3g}</text>',
        *lines, "</svg>\n"])
    atomic_write_text(path, body)


__all__ = ["write"]
