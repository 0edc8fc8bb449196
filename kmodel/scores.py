"""Scores: how well stored predictions match the targets, by task, and the score table's one
format (a ``scores`` document, read back by ``read``).

Each prediction file is read aligned to the targets by id, its prediction taken in the
task's form (kmodel/metrics.py: P(y=1), class probabilities, values) and scored with the
task's metrics, which equal scikit-learn's. For a composition the table also holds a
leaderboard: every base model, the simple average of their predictions and the ensemble,
each with its test scores and, for the base models and the average, its scores on the
level-one rows (out-of-fold for cv, the blend rows for holdout), the best single model by
those, and the ensembler's weight per model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kmodel import checksums, formats, metrics, provenance
from kmodel._fs import check_input_file, guard_output, sha256_file
from kmodel.compose import (
    Task,
    _count,
    _layout,
    align,
    prediction_columns,
    targets_of,
    task_of,
)
from kmodel.defaults import TARGET_NAME
from kmodel.errors import InputSchemaError, KmodelError, TaskError, ValuesChangedError
from kmodel.io import hdf5

Table = dict[str, dict[str, Any]]
ENSEMBLE, AVERAGE = "ensemble", "average"
FLAGS = {"in-sample": "in-sample stacking: the ensembler was fitted on rows the base models "
                      "were trained on, so its weights trust whichever memorised them"}


@dataclass
class Report:
    """A score table: the task, its metrics, test scores by label, and (for a composition)
    level-one scores, the leaderboard, the ensembler's weights and flags."""

    task: str
    classes: list[Any]
    metrics: list[str]
    primary: str
    scores: Table
    level_one: Table = field(default_factory=dict)
    leaderboard: list[dict[str, Any]] = field(default_factory=list)
    weights: dict[str, float] = field(default_factory=dict)
    best: str | None = None
    stacking: str | None = None
    #: what the ensembler said of its fit: its cross-validated loss on the level-one rows
    #: and whether it kept the stacking or one model alone
    ensembler: dict[str, Any] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    figure: str | None = None
    #: the figure's sha256, as drawn (an edited figure is found by `kmodel status`)
    figure_sha256: str | None = None


def _prediction(path: Path, y_ids: np.ndarray, task: Task) -> tuple[np.ndarray, np.dtype]:
    """The file's prediction for ``task`` in the targets' row order, and its stored dtype."""
    from kmodel.compose import _record

    check_input_file(path)
    _count(path)  # no rows: nothing to score
    checksums.check(path)
    try:
        arrays, ids = hdf5.read_group(path, "preds")
    except (OSError, hdf5.LayoutError) as e:
        raise InputSchemaError(f"{path}: not a prediction file ({e})") from None
    key, _, cols = prediction_columns(path, task, _record(path).model or path.stem)
    values = arrays[key].reshape(len(ids), -1)[:, [0 if c is None else c for c in cols]]
    order = align(y_ids, hdf5.as_ids(ids), path)
    try:
        return metrics.as_prediction(task.task, values[order], len(task.classes)), \
            arrays[key].dtype
    except metrics.PredictionError as e:
        raise TaskError(f"{path}: its prediction /preds/{key} {e}; a {task.task} task cannot "
                        "score it") from None


def _scores(task: Task, y: np.ndarray, predictions: dict[str, tuple[np.ndarray, np.dtype]]
            ) -> Table:
    table: Table = {}
    for label, (pred, stored) in predictions.items():
        table[label] = {**metrics.score(task.task, y, pred, task.classes, stored),
                        "rows": len(y)}
    return table


def _average(predictions: dict[str, tuple[np.ndarray, np.dtype]], labels: list[str]
             ) -> tuple[np.ndarray, np.dtype]:
    return (np.mean([predictions[k][0] for k in labels], axis=0), np.dtype(np.float32))


def _read_all(files: dict[str, Path], targets: Path, target_name: str, task: Task
              ) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, np.dtype]]]:
    y, ids = targets_of(targets, target_name)
    return y, {label: _prediction(path, ids, task) for label, path in files.items()}


def _weights(ensembler: Path | None, models: list[str]
             ) -> tuple[dict[str, float], str | None, dict[str, Any]]:
    """The ensembler's weight per base model (the mean over its columns), its stacking and
    what it said of its fit."""
    kept = provenance.read_folder_record(ensembler) if ensembler else None
    if kept is None:
        return {}, None, {}
    found: dict[str, float] = {}
    bases = [s.split(":")[0] for s in kept.sources or [] if not s.startswith("data:")]
    said = dict(kept.fit_report or {})
    chose = str(said.get("chose", ""))
    if chose.startswith("model ") and chose[6:].isdigit() and int(chose[6:]) < len(bases):
        said["chose"] = f"model {bases[int(chose[6:])]}"  # by name
    if kept.column_weights and kept.sources:
        width = (len(kept.classes or []) if kept.task == "multiclass" else 1) or 1
        for k, name in enumerate(bases):
            cols = kept.column_weights[k * width:(k + 1) * width]
            if name in models and cols:
                found[name] = float(np.mean(cols))
    return found, kept.stacking, said


def score(preds: dict[str, Path], targets: Path, target_name: str = TARGET_NAME,
          output: Path | None = None, *, task: str | None = None,
          level_one: dict[str, Path] | None = None, level_one_targets: Path | None = None,
          ensembler: Path | None = None, figure: Path | None = None,
          outputs: dict[str, str] | None = None) -> Report:
    """Score each prediction file against the targets, by task (given; the ensembler's; or
    inferred from the targets). For a composition, ``level_one`` (the base models'
    predictions of ``level_one_targets``' rows), ``ensembler`` (its trained folder) and
    ``figure`` (an SVG to draw) add the leaderboard; ``outputs``: the dataset to score of a
    model whose files hold several (default: the ensembler's choice). Written to ``output``
    if given."""
    for path in (output, figure):
        if path is not None:
            guard_output(path, [targets, *preds.values(), *(level_one or {}).values()],
                         replaceable=_is_table if path == output else _is_figure)
    kept = provenance.read_folder_record(ensembler) if ensembler else None
    check_input_file(targets)
    if _count(targets, empty=True) == 0:
        return _nothing(preds, targets, output, task or (kept.task if kept else None))
    found_task = task_of(targets, target_name, task or (kept.task if kept else None),
                         outputs or (kept.outputs if kept else None))
    if kept and kept.classes and found_task.task != "regression":
        found_task = Task(found_task.task, list(kept.classes), found_task.outputs)
    y, predictions = _read_all(preds, targets, target_name, found_task)
    bases = [label for label in preds if label != ENSEMBLE]
    report = Report(found_task.task, found_task.classes,
                    list(metrics.METRICS[found_task.task]), metrics.PRIMARY[found_task.task],
                    _scores(found_task, y, predictions))
    if level_one and level_one_targets is not None:
        _leaderboard(report, found_task, predictions, bases, level_one, level_one_targets,
                     target_name, y)
    report.weights, report.stacking, report.ensembler = _weights(ensembler, bases)
    if report.stacking in FLAGS:
        report.flags.append(FLAGS[report.stacking])
    said = report.ensembler
    if report.level_one and said.get("metric") == report.primary and "cv" in said:
        # the ensembler's own cross-validated loss on the level-one rows
        report.level_one[ENSEMBLE] = {report.primary: said["cv"], "rows": said.get("rows")}
        for row in report.leaderboard:
            if row["label"] == ENSEMBLE:
                row["level_one"] = report.level_one[ENSEMBLE]
    if figure is not None:
        from kmodel import figure as drawing

        drawing.write(figure, found_task, y, {k: v[0] for k, v in predictions.items()})
        report.figure, report.figure_sha256 = figure.name, sha256_file(figure)
    if output is not None:
        formats.write(output, "scores", asdict(report))
    return report


def _nothing(preds: dict[str, Path], targets: Path, output: Path | None, task: str | None
             ) -> Report:
    """The table of targets without rows (an empty region or shard): every label with no
    rows and no scores; a flag says there was nothing to score."""
    for path in preds.values():  # the files must still be prediction files
        check_input_file(path)
        _layout(path)
    names = list(next((v for k, v in metrics.METRICS.items() if k == task), ()))
    report = Report(task or "unknown", [], names, names[0] if names else "",
                    {label: {"rows": 0} for label in preds},
                    flags=[f"nothing to score: {targets} has no rows"])
    if output is not None:
        formats.write(output, "scores", asdict(report))
    return report


def _leaderboard(report: Report, task: Task, predictions: dict[str, tuple[np.ndarray, Any]],
                 bases: list[str], level_one: dict[str, Path], level_one_targets: Path,
                 target_name: str, y: np.ndarray) -> None:
    """Level-one scores of the base models and their average, the best single model by
    them, and every row of the leaderboard (sorted by the test primary metric)."""
    y1, first = _read_all(level_one, level_one_targets, target_name, task)
    first[AVERAGE] = _average(first, list(level_one))
    report.level_one = _scores(task, y1, first)
    if len(bases) > 1:
        predictions[AVERAGE] = _average(predictions, bases)
        report.scores[AVERAGE] = _scores(task, y, {AVERAGE: predictions[AVERAGE]})[AVERAGE]
    primary = report.primary
    ranked = [b for b in level_one if report.level_one[b].get(primary) is not None]
    if ranked:
        best = ranked[0]
        for b in ranked[1:]:
            if metrics.better(primary, report.level_one[b][primary],
                              report.level_one[best][primary]):
                best = b
        report.best = best
    sign = 1.0 if primary in metrics.LOWER_IS_BETTER else -1.0

    def rank(label: str) -> float:
        value = report.scores[label].get(primary)
        return np.inf if value is None else sign * float(value)

    report.leaderboard = [
        {"label": label, "test": report.scores[label],
         "kind": "ensemble" if label == ENSEMBLE else "average" if label == AVERAGE else "model",
         "level_one": report.level_one.get(label), "best": label == report.best}
        for label in sorted(report.scores, key=rank)]


# --- reading a score table --------------------------------------------------------------


def _number(v: object) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)
                         and bool(np.isfinite(v)))


def _table(path: Path, verify: bool = True) -> tuple[int, Any]:
    """The table part of a score file, unchecked: version 0 (an older kmodel's) is the
    bare mapping of labels; later versions hold it under ``scores``."""
    version, body = formats.read(path, "scores", verify=verify)
    return version, body if version == 0 else body.get("scores")


def problem(path: Path, labels: list[str] | None = None, *, verify: bool = True
            ) -> str | None:
    """Why a scores file is not a score table (of ``labels``, when given; ``verify``: as
    `kmodel score` wrote it), or None."""
    try:
        _, table = _table(path, verify)
    except ValuesChangedError:
        return f"edited after `kmodel score` wrote it (its {formats.CHECKSUM} differs)"
    except (OSError, KmodelError):
        return "unreadable"
    if not isinstance(table, dict) or (labels is not None and not set(labels) <= set(table)):
        return f"not a score table of {', '.join(labels or ['labels'])}"
    for label, row in table.items():
        if not isinstance(row, dict) or not isinstance(row.get("rows"), int) or not all(
                _number(v) for k, v in row.items() if k != "rows"):
            return f"its scores of {label} are not numbers as `kmodel score` writes them"
    return None


def read(path: Path) -> dict[str, Any]:
    """The score document at ``path`` (its ``scores`` table checked); KmodelError (or
    OSError) if it is not one. Tables of older versions come back as ``{"scores": ...}``."""
    if why := problem(path):
        raise InputSchemaError(f"{path}: {why}; score again")
    version, body = formats.read(path, "scores")
    return {"scores": body} if version == 0 else body


def figure_sha256(path: Path) -> str | None:
    """The sha256 of the figure drawn with the score table at ``path`` (None: none)."""
    try:
        version, body = formats.read(path, "scores", verify=False)
    except (OSError, KmodelError):
        return None
    found = body.get("figure_sha256") if version else None
    return found if isinstance(found, str) else None


def _is_table(path: Path) -> bool:
    """A score table kmodel wrote (even edited since: remaking it is what is wanted)."""
    if why := problem(path, verify=False):
        raise InputSchemaError(f"{path}: {why}")
    return True


def _is_figure(path: Path) -> bool:
    return path.read_text(encoding="utf-8").startswith("<svg") and "kmodel" in path.read_text(
        encoding="utf-8")[:400]


__all__ = ["AVERAGE", "ENSEMBLE", "Report", "Table", "figure_sha256", "problem", "read",
           "score"]
