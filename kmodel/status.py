"""Which outputs of a composition are fresh, stale (and why) or missing.

Reads provenance: the attributes recorded in each prediction file, the ensembler's
``provenance.json``, and the sha256 of specs, code, weights, lockfiles and inputs (cached by
file identity); and each output's values against the checksums recorded as they were
written (read once per version of a file). No env is built and no model runs.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kmodel import checksums, provenance, record
from kmodel import scores as scores_mod
from kmodel._fs import cached_sha256
from kmodel.errors import KmodelError, ValuesChangedError
from kmodel.io import hdf5
from kmodel.plan import FIT, HOLDOUT, SPLITS, Plan
from kmodel.provenance import FolderRecord
from kmodel.record import Made
from kmodel.registry import Model, Registry
from kmodel.weights import Weights, read_manifest

UPSTREAM = "upstream output"


@dataclass
class Entry:
    path: Path
    what: str
    reasons: list[str] = field(default_factory=list)
    missing: bool = False

    @property
    def state(self) -> str:
        return "missing" if self.missing else "stale" if self.reasons else "fresh"

    @property
    def own_reasons(self) -> list[str]:
        """Reasons Snakemake cannot see itself (not just a changed upstream output)."""
        return [r for r in self.reasons if not r.startswith(UPSTREAM)]

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "what": self.what, "state": self.state,
                "reasons": self.reasons}


def _weights_reasons(model: Model, weights: Weights | None, trained: bool = False,
                     ) -> list[str]:
    """Weight files that no longer match the hashes their manifest lists."""
    for name, _ in weights.problems() if weights is not None else []:
        if trained:
            return [f"weights ({name} changed since training)"]
        return [f"weights ({name} changed; `kmodel hash {model.name} --write` records it)"]
    return []


def _stale_upstream(entry: Entry, upstream: list[Entry]) -> None:
    """An output made from outputs that are not fresh is not fresh either (one reason)."""
    behind = [str(e.path) for e in upstream if e.state != "fresh"]
    if behind and not entry.missing and not any(r.startswith(UPSTREAM) for r in entry.reasons):
        entry.reasons.append(f"{UPSTREAM} ({', '.join(behind)} not fresh)")


def _values(entry: Entry) -> None:
    """Datasets of an HDF5 output edited after kmodel wrote them (their checksums)."""
    if entry.missing or not entry.path.is_file():
        return
    try:
        found = checksums.problems(entry.path)
    except (OSError, ValueError):
        return  # unreadable: the entry's other checks say so
    if found:
        entry.reasons.append(f"values ({found[0]})")


def _prediction(path: Path, what: str, model: Model, expected: Callable[[], Made],
                inputs: dict[str, Path]) -> Entry:
    """A prediction file of ``model`` against what it must record now (``expected``,
    computed only for files that exist); ``inputs``: the input file (for base models) or
    the upstream prediction files (for the ensemble)."""
    entry = Entry(path, what)
    if not path.is_file():
        entry.missing = True
        return entry
    try:
        found = record.read(path)
    except (OSError, ValueError):
        entry.reasons.append("unreadable")
        return entry
    except KmodelError as e:  # a newer kmodel's file
        entry.reasons.append(e.message)
        return entry
    source = inputs.get("input")
    rows = None
    if source is not None and source.is_file():
        with contextlib.suppress(OSError, ValueError):
            rows = hdf5.count_ids(source)
    if problem := provenance.whole(path, found, model, rows):
        entry.reasons.append(problem)
    else:
        _values(entry)
    entry.reasons += expected().reasons(found.made)
    if source is not None:
        if not source.is_file():
            entry.reasons.append(f"input ({source} is missing)")
        elif found.input_sha256 != cached_sha256(source):
            entry.reasons.append("input")
    else:
        entry.reasons += _upstream(found.upstream_sha256, inputs)
    return entry


def _upstream(recorded: dict[str, str] | None, files: dict[str, Path]) -> list[str]:
    then = recorded or {}
    # by content, not by path: a project moved to another folder (paths are recorded
    # absolute) is still fresh; a file changed, or a model added or dropped, is not
    now = {str(p): cached_sha256(p) if p.is_file() else None for p in files.values()}
    if sorted(map(str, then.values())) == sorted(str(d) for d in now.values()):
        return []
    known = set(then.values())
    changed = [p for p, d in now.items() if d is None or d not in known]
    return [f"{UPSTREAM} ({', '.join(changed) or 'other files than it was made from'})"]


def _data(plan: Plan) -> dict[str, Entry]:
    """The example data a composition generates (``data: builtin:``), against its config:
    a file made with another seed or split is stale. Data files the user gives are inputs."""
    data = plan.config.data
    if not data.builtin:
        return {}
    want = {"builtin": data.builtin, "seed": data.seed, "test_fraction": data.test_fraction}
    entries = {}
    for split in SPLITS:
        entry = entries[split] = Entry(plan.data(split), f"{split} data ({data.builtin})")
        entry.reasons += _attrs_reasons(entry, want, "data config")
        _values(entry)
    return entries


def _attrs_reasons(entry: Entry, want: dict[str, Any], what: str) -> list[str]:
    """A data file kmodel made, against the settings it must record (missing: set)."""
    if not entry.path.is_file():
        entry.missing = True
        return []
    try:
        attrs = hdf5.read_attrs(entry.path)
    except (OSError, ValueError):
        return ["unreadable"]
    # (files of older versions may not record every setting: not held against them)
    changed = [k for k, v in want.items() if k in attrs and attrs[k] != v]
    return [f"{what} ({', '.join(changed)})"] if changed else []


def _folds(plan: Plan, source: str, train: Path, upstream: list[Entry]
           ) -> dict[tuple[int, str], Entry]:
    """The fold files of cv cut from ``train`` (the data's, or a fed model's input), against
    that file and the config."""
    want: dict[str, Any] = {"folds": plan.folds, "seed": plan.config.stacking.seed}
    if plan.config.task:
        want["task"] = plan.config.task
    entries = {}
    for k in range(plan.folds):
        for part in (FIT, HOLDOUT):
            entry = entries[(k, part)] = Entry(plan.fold(k, part, source),
                                               f"fold {k} ({part}, {source})")
            entry.reasons += _attrs_reasons(entry, want, "folds config")
            _values(entry)
            if not entry.missing and train.is_file():
                with contextlib.suppress(OSError, ValueError):
                    if hdf5.read_attrs(entry.path).get("source_sha256") != cached_sha256(train):
                        entry.reasons.append("input")
            _stale_upstream(entry, upstream)
    return entries


def _assembled(plan: Plan, model: str, entries: list[Entry]) -> dict[str, Entry]:
    """The input files of a model fed by other models, against what they were made of."""
    found = {}
    for split in plan.splits:
        entry = found[split] = Entry(plan.data_of(model, split), f"{model} inputs ({split})")
        sources = {str(f): f for _, f, _ in plan.assembled(model, split)}
        sources[str(plan.data(split))] = plan.data(split)
        if not entry.path.is_file():
            entry.missing = True
        else:
            try:
                recorded = hdf5.read_attrs(entry.path).get("upstream_sha256")
                then = json.loads(str(recorded)) if recorded is not None else {}
            except (OSError, ValueError):
                then = {}
            entry.reasons += _upstream(then if isinstance(then, dict) else {}, sources)
            _values(entry)
        _stale_upstream(entry, [e for e in entries if str(e.path) in sources])
    return found


def status(plan: Plan, registry: Registry) -> list[Entry]:
    """Every output of the composition, in the order the workflow makes them."""
    reg = plan.registry(registry)
    cfg = plan.config
    data = _data(plan)
    entries: list[Entry] = [*data.values()]
    folds = {}
    if plan.method == "cv":
        folds["data"] = _folds(plan, "data", plan.data("train"),
                               [e for e in [data.get("train")] if e is not None])
        entries += folds["data"].values()
    for name in _in_order(cfg):  # a model fed by others after them
        inputs = dict(data)
        if name in cfg.inputs:
            inputs = _assembled(plan, name, entries)
            entries += inputs.values()
            if plan.method == "cv":
                folds[name] = _folds(plan, name, plan.data_of(name, "train"),
                                     [inputs["train"]])
                entries += folds[name].values()
        if plan.method == "cv":
            entries += _cross_fitted(plan, reg, name, inputs, folds[plan.source(name)])
        else:
            entries += _base_predictions(plan, reg, name, inputs)
    ensembler = reg.model(cfg.ensembler)
    preds = {split: {str(plan.preds(m, split)): plan.preds(m, split) for m in cfg.models}
             for split in plan.splits}
    level = plan.level_one
    made = [e for e in entries if str(e.path) in preds["test"]]
    trained, fitted = _trained(plan.ensembler_weights, f"{ensembler.name} weights (trained)",
                               reg, ensembler, upstream_files={**preds[level],
                                                               "targets": plan.data(level)},
                               upstream=[e for e in entries if str(e.path) in preds[level]],
                               expected_inputs=functools.partial(_ensembler_inputs, plan))
    ensemble = _ensemble(plan, reg, ensembler, fitted, preds["test"], [trained, *made])
    return [*entries, trained, ensemble, *_scores(plan, [ensemble, trained, *made])]


def _in_order(cfg: Any) -> list[str]:
    """The composition's models, each after the models that feed it."""
    done: list[str] = []
    while len(done) < len(cfg.models):
        done += [m for m in cfg.models if m not in done
                 and all(u in done for u in cfg.upstream_of(m))]
    return done


def _base_predictions(plan: Plan, reg: Registry, name: str, data: dict[str, Entry]
                      ) -> list[Entry]:
    """A base model's predictions, with its own weights, of the level-one and test splits."""
    model = reg.model(name)
    weights = Weights.of(model)
    expected = functools.cache(lambda: provenance.of_model(reg, model, weights))
    entries = []
    for split in plan.splits:
        entry = _prediction(plan.preds(name, split), f"{name} predictions ({split})",
                            model, expected, {"input": plan.data_of(name, split)})
        if not entry.missing:
            entry.reasons += _weights_reasons(model, weights)
            if split in data and not data[split].missing:
                _stale_upstream(entry, [data[split]])
        entries.append(entry)
    return entries


def _cross_fitted(plan: Plan, reg: Registry, name: str, data: dict[str, Entry],
                  folds: dict[tuple[int, str], Entry]) -> list[Entry]:
    """A cross-fitted base model: its weights and holdout predictions per fold, its
    out-of-fold predictions (level-one), its weights refitted on the train split and its
    test predictions."""
    model = reg.model(name)
    entries, fold_preds = [], {}
    for k in range(plan.folds):
        fold, source = folds[(k, FIT)], plan.source(name)
        weights, fitted = _trained(plan.fold_weights(name, k), f"{name} weights (fold {k})",
                                   reg, model, source=plan.fold(k, FIT, source), upstream=[fold])
        pred = _predicted(plan.fold_preds(name, k), f"{name} predictions (fold {k})", reg,
                          model, fitted, plan.fold(k, HOLDOUT, source),
                          [weights, folds[(k, HOLDOUT)]])
        fold_preds[str(pred.path)] = pred.path
        entries += [weights, pred]
    oof = _prediction(plan.preds(name, "train"), f"{name} predictions (out-of-fold)", model,
                      functools.cache(lambda: provenance.of_model(reg, model, None)),
                      {"input": plan.data_of(name, "train")})
    if not oof.missing:
        with contextlib.suppress(OSError, ValueError, KmodelError):
            oof.reasons += _upstream(record.read(oof.path).upstream_sha256, fold_preds)
    _stale_upstream(oof, [e for e in entries if str(e.path) in fold_preds])
    full, refitted = _trained(plan.full_weights(name), f"{name} weights (train split)", reg,
                              model, source=plan.data_of(name, "train"),
                              upstream=[e for e in [data.get("train")] if e is not None])
    test = _predicted(plan.preds(name, "test"), f"{name} predictions (test)", reg, model,
                      refitted, plan.data_of(name, "test"),
                      [full, *[e for e in [data.get("test")] if e is not None]])
    return [*entries, oof, full, test]


def _predicted(path: Path, what: str, reg: Registry, model: Model, weights: Weights | None,
               source: Path, upstream: list[Entry]) -> Entry:
    """Predictions made with trained ``weights`` (None: missing, so these are stale)."""
    entry = _prediction(path, what, model,
                        functools.cache(lambda: provenance.of_model(reg, model, weights)),
                        {"input": source})
    if weights is None and not entry.missing:
        entry.reasons.append(f"{UPSTREAM} (its weights are missing)")
    _stale_upstream(entry, upstream)
    return entry


def _trained(folder: Path, what: str, reg: Registry, model: Model, *,
             source: Path | None = None, upstream_files: dict[str, Path] | None = None,
             upstream: Sequence[Entry] = (),
             expected_inputs: Callable[[FolderRecord], list[str]] | None = None,
             ) -> tuple[Entry, Weights | None]:
    """A weights folder kmodel trained (and its weights, when there is one): what made it,
    its files against its manifest, and what it was trained on: ``source`` (its rows'
    file) or ``upstream_files`` (the ensembler's prediction files and targets)."""
    trained = Entry(folder, what)
    manifest = read_manifest(folder, verify=False)
    if manifest is None:
        trained.missing = True
        return trained, None
    kept = FolderRecord()
    try:
        read_manifest(folder)
        kept = provenance.read_folder_record(folder) or kept
    except ValuesChangedError as e:
        trained.reasons.append(f"edited ({e.message.split(': ', 1)[-1]})")
        kept = provenance.read_folder_record(folder, verify=False) or kept
    except KmodelError as e:
        trained.reasons.append(e.message)
    if expected_inputs is not None:
        trained.reasons += expected_inputs(kept)
    trained.reasons += provenance.of_model(reg, model, None).reasons(kept.made)
    fitted = Weights(folder, manifest, in_spec=False)
    trained.reasons += _weights_reasons(model, fitted, trained=True)
    if source is not None:
        on = kept.trained_on
        if not source.is_file():
            trained.reasons.append(f"input ({source} is missing)")
        elif on is None or on.input_sha256 != cached_sha256(source):
            trained.reasons.append("input")
    if upstream_files is not None:
        trained.reasons += _upstream(kept.upstream_sha256, upstream_files)
    _stale_upstream(trained, list(upstream))
    return trained, fitted


def _ensembler_inputs(plan: Plan, kept: FolderRecord) -> list[str]:
    """What the trained ensembler takes against what the composition gives it now: the
    models in order, the output chosen of each, the passthrough inputs, the task and how
    its rows were kept apart. Any difference makes it stale."""
    cfg = plan.config
    if kept.sources is None:
        return ["inputs (not recorded: trained by an older kmodel)"]
    pairs = [(s.partition(":")[0], s.partition(":")[2]) for s in kept.sources]
    models = [m for m, _ in pairs if m != "data"]
    raw = [n for m, n in pairs if m == "data"]
    found = []
    if models != list(cfg.models):
        found.append(f"inputs (trained on the predictions of {', '.join(models)}, in this "
                     f"order; the composition lists {', '.join(cfg.models)})")
    if dict(kept.outputs or {}) != dict(cfg.outputs):
        found.append(f"inputs (trained on outputs {dict(kept.outputs or {})}; the composition "
                     f"chooses {dict(cfg.outputs)})")
    if raw != list(cfg.passthrough):
        found.append(f"inputs (passthrough {raw} when trained; now {list(cfg.passthrough)})")
    if cfg.task and kept.task and kept.task != cfg.task:
        found.append(f"task ({kept.task} when trained; now {cfg.task})")
    if kept.stacking and kept.stacking != plan.method:
        found.append(f"stacking ({kept.stacking} when trained; now {plan.method})")
    return found


def _ensemble(plan: Plan, reg: Registry, ensembler: Model, fitted: Weights | None,
              preds: dict[str, Path], upstream: list[Entry]) -> Entry:
    """The ensemble's predictions (test split)."""
    what = f"{ensembler.name} predictions (test)"
    if fitted is None:
        ensemble = Entry(plan.ensemble, what, missing=not plan.ensemble.is_file())
        if not ensemble.missing:
            ensemble.reasons.append(f"{UPSTREAM} ({plan.ensembler_weights} is missing)")
        return ensemble
    inputs = {**preds, **({"data": plan.data("test")} if plan.data("test").is_file() else {})}
    ensemble = _prediction(plan.ensemble, what, ensembler,
                           lambda: provenance.of_model(reg, ensembler, fitted), inputs)
    _stale_upstream(ensemble, upstream)
    return ensemble


def _scores(plan: Plan, inputs: list[Entry]) -> list[Entry]:
    """The score table and its figure, made from the test predictions, the level-one
    predictions and the trained ensembler."""
    entry = Entry(plan.scores, "scores")
    figure = Entry(plan.figure, "scores figure", missing=not plan.figure.is_file())
    if not plan.scores.is_file():
        entry.missing = True
    elif problem := scores_mod.problem(plan.scores, [*plan.config.models, "ensemble"]):
        entry.reasons.append(problem)
    else:
        made = plan.scores.stat().st_mtime
        behind = [str(e.path) for e in inputs if e.state != "fresh"
                  or e.path.stat().st_mtime > made]
        if behind:
            entry.reasons.append(f"{UPSTREAM} ({', '.join(behind)})")
    if not figure.missing and not entry.missing and scores_mod.figure_sha256(
            plan.scores) not in (None, cached_sha256(plan.figure)):
        figure.reasons.append("edited (it differs from the figure `kmodel score` drew)")
    return [entry, figure]


def forced(plan: Plan, entries: list[Entry]) -> list[str]:
    """Files `kmodel run` must have Snakemake remake: missing ones (Snakemake would not make
    a deleted intermediate file while what follows it exists) and stale ones (kmodel run
    turns Snakemake's mtime trigger off: content, not timestamps, decides). A sharded
    model's stale predictions are remade from new shards; missing ones are merged again."""
    out = []
    for entry in entries:
        if entry.missing:
            out.append(str(entry.path))
            continue
        if not entry.own_reasons:
            continue
        model = next((m for m in plan.config.models
                      if entry.path in (plan.preds(m, s) for s in plan.splits)), None)
        if model is not None and plan.config.shards_of(model) > 1:
            out += [str(plan.shard(model, s, k)) for s in plan.splits
                    for k in range(plan.config.shards_of(model))]
        else:
            out.append(str(entry.path))
    return sorted(set(out))


__all__ = ["Entry", "forced", "status"]
