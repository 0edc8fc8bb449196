"""Which outputs of a composition are fresh, stale (and why) or missing.

Reads provenance only: the attributes recorded in each prediction file, the ensembler's
``provenance.json``, and the sha256 of specs, code, weights, lockfiles and inputs (cached by
file identity). No env is built and no model runs.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kmodel import provenance, record
from kmodel import scores as scores_mod
from kmodel._fs import cached_sha256
from kmodel.errors import KmodelError
from kmodel.io import hdf5
from kmodel.plan import SPLITS, Plan
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
        if not entry.path.is_file():
            entry.missing = True
            continue
        try:
            attrs = hdf5.read_attrs(entry.path)
        except (OSError, ValueError):
            entry.reasons.append("unreadable")
            continue
        # (files of older versions record no builtin or test_fraction: not held against them)
        changed = [k for k, v in want.items() if k in attrs and attrs[k] != v]
        if changed:
            entry.reasons.append(f"data config ({', '.join(changed)})")
    return entries


def status(plan: Plan, registry: Registry) -> list[Entry]:
    """Every output of the composition, in the order the workflow makes them."""
    reg = plan.registry(registry)
    cfg = plan.config
    data = _data(plan)
    entries: list[Entry] = [*data.values()]
    for name in cfg.models:
        entries += _base_predictions(plan, reg, name, data)
    ensembler = reg.model(cfg.ensembler)
    preds = {split: {str(plan.preds(m, split)): plan.preds(m, split) for m in cfg.models}
             for split in SPLITS}
    made = [e for e in entries if str(e.path) in preds["test"]]
    trained, fitted = _trained(plan, reg, ensembler, preds["train"],
                               [e for e in entries if str(e.path) in preds["train"]])
    ensemble = _ensemble(plan, reg, ensembler, fitted, preds["test"], [trained, *made])
    return [*entries, trained, ensemble, _scores(plan, [ensemble, *made])]


def _base_predictions(plan: Plan, reg: Registry, name: str, data: dict[str, Entry]
                      ) -> list[Entry]:
    """A base model's predictions of each split."""
    model = reg.model(name)
    weights = Weights.of(model)
    expected = functools.cache(lambda: provenance.of_model(reg, model, weights))
    entries = []
    for split in SPLITS:
        entry = _prediction(plan.preds(name, split), f"{name} predictions ({split})",
                            model, expected, {"input": plan.data(split)})
        if not entry.missing:
            entry.reasons += _weights_reasons(model, weights)
            if split in data and not data[split].missing:
                _stale_upstream(entry, [data[split]])
        entries.append(entry)
    return entries


def _trained(plan: Plan, reg: Registry, ensembler: Model, preds: dict[str, Path],
             upstream: list[Entry]) -> tuple[Entry, Weights | None]:
    """The ensembler's trained weights folder (and its weights, when there is one)."""
    folder = plan.ensembler_weights
    trained = Entry(folder, f"{ensembler.name} weights (trained)")
    manifest = read_manifest(folder)
    if manifest is None:
        trained.missing = True
        return trained, None
    kept = provenance.read_folder_record(folder) or provenance.FolderRecord()
    trained.reasons += provenance.of_model(reg, ensembler, None).reasons(kept.made)
    fitted = Weights(folder, manifest, in_spec=False)
    trained.reasons += _weights_reasons(ensembler, fitted, trained=True)
    trained.reasons += _upstream(kept.upstream_sha256, {**preds, "targets": plan.data("train")})
    _stale_upstream(trained, upstream)
    return trained, fitted


def _ensemble(plan: Plan, reg: Registry, ensembler: Model, fitted: Weights | None,
              preds: dict[str, Path], upstream: list[Entry]) -> Entry:
    """The ensemble's predictions (test split)."""
    what = f"{ensembler.name} predictions (test)"
    if fitted is None:
        ensemble = Entry(plan.ensemble, what, missing=not plan.ensemble.is_file())
        if not ensemble.missing:
            ensemble.reasons.append(f"{UPSTREAM} ({plan.ensembler_weights} is missing)")
        return ensemble
    ensemble = _prediction(plan.ensemble, what, ensembler,
                           lambda: provenance.of_model(reg, ensembler, fitted), preds)
    _stale_upstream(ensemble, upstream)
    return ensemble


def _scores(plan: Plan, inputs: list[Entry]) -> Entry:
    """The score table, made from the ensemble's and the base models' test predictions."""
    entry = Entry(plan.scores, "scores")
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
    return entry


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
                      if entry.path in (plan.preds(m, s) for s in SPLITS)), None)
        if model is not None and plan.config.shards_of(model) > 1:
            out += [str(plan.shard(model, s, k)) for s in SPLITS
                    for k in range(plan.config.shards_of(model))]
        else:
            out.append(str(entry.path))
    return sorted(set(out))


__all__ = ["Entry", "forced", "status"]
