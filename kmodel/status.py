"""Which outputs of a composition are fresh, stale (and why) or missing.

Reads provenance only: the attributes recorded in each prediction file, the ensembler's
``provenance.json``, and the sha256 of specs, code, weights, lockfiles and inputs (cached by
file identity). No env is built and no model runs.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kmodel import provenance
from kmodel._fs import cached_sha256, sha256_file
from kmodel.io import hdf5
from kmodel.plan import SPLITS, Plan
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
    if weights is None:
        return []
    for name, digest in weights.sha256.items():
        path = weights.folder / name
        if not path.is_file() or sha256_file(path) != digest:
            if trained:
                return [f"weights ({name} changed since training)"]
            return [f"weights ({name} changed; `kmodel hash {model.name} --write` records it)"]
    return []


def _stale_upstream(entry: Entry, upstream: list[Entry]) -> None:
    """An output made from outputs that are not fresh is not fresh either (one reason)."""
    behind = [str(e.path) for e in upstream if e.state != "fresh"]
    if behind and not entry.missing and not any(r.startswith(UPSTREAM) for r in entry.reasons):
        entry.reasons.append(f"{UPSTREAM} ({', '.join(behind)} not fresh)")


def _prediction(path: Path, what: str, model: Model, expected: Callable[[], dict[str, str]],
                inputs: dict[str, Path]) -> Entry:
    """A prediction file of ``model`` against what it must record now (``expected``,
    computed only for files that exist); ``inputs``: the input file (for base models) or
    the upstream prediction files (for the ensemble)."""
    entry = Entry(path, what)
    if not path.is_file():
        entry.missing = True
        return entry
    try:
        attrs = hdf5.read_attrs(path)
    except (OSError, ValueError):
        entry.reasons.append("unreadable")
        return entry
    source = inputs.get("input")
    rows = None
    if source is not None and source.is_file():
        with contextlib.suppress(OSError, ValueError):
            rows = hdf5.count_ids(source)
    if problem := provenance.incomplete(path, attrs, model, rows):
        entry.reasons.append(problem)
    entry.reasons += provenance.differences(attrs, expected())
    if source is not None:
        if not source.is_file():
            entry.reasons.append(f"input ({source} is missing)")
        elif attrs.get("input_sha256") != cached_sha256(source):
            entry.reasons.append("input")
    else:
        entry.reasons += _upstream(attrs.get("upstream_sha256"), inputs)
    return entry


def _upstream(recorded: Any, files: dict[str, Path]) -> list[str]:
    try:
        then = json.loads(recorded) if isinstance(recorded, str) else {}
    except ValueError:
        then = {}
    # by content, not by path: a project moved to another folder (paths are recorded
    # absolute) is still fresh; a file changed, or a model added or dropped, is not
    now = {str(p): cached_sha256(p) if p.is_file() else None for p in files.values()}
    if sorted(map(str, then.values())) == sorted(str(d) for d in now.values()):
        return []
    recorded = set(then.values())
    changed = [p for p, d in now.items() if d is None or d not in recorded]
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
    entries: list[Entry] = []
    data = _data(plan)
    entries += data.values()
    for name in cfg.models:
        model = reg.model(name)
        weights = Weights.of(model)
        expected = functools.cache(lambda m=model, w=weights: provenance.of_model(reg, m, w))
        for split in SPLITS:
            entry = _prediction(plan.preds(name, split), f"{name} predictions ({split})",
                                model, expected, {"input": plan.data(split)})
            if not entry.missing:
                entry.reasons += _weights_reasons(model, weights)
                if split in data and not data[split].missing:
                    _stale_upstream(entry, [data[split]])
            entries.append(entry)

    ensembler = reg.model(cfg.ensembler)
    train_preds = {str(plan.preds(m, "train")): plan.preds(m, "train") for m in cfg.models}
    test_preds = {str(plan.preds(m, "test")): plan.preds(m, "test") for m in cfg.models}
    folder = plan.ensembler_weights
    trained = Entry(folder, f"{cfg.ensembler} weights (trained)")
    manifest = read_manifest(folder)
    if manifest is None:
        trained.missing = True
    else:
        record = provenance.read_folder_record(folder)
        trained.reasons += provenance.differences(
            record, provenance.of_model(reg, ensembler, None))
        fitted = Weights(folder, manifest, in_spec=False)
        trained.reasons += _weights_reasons(ensembler, fitted, trained=True)
        trained.reasons += _upstream(record.get("upstream_sha256"),
                                     {**train_preds, "targets": plan.data("train")})
        _stale_upstream(trained, [e for e in entries if str(e.path) in train_preds])
    entries.append(trained)

    if trained.missing:
        ensemble = Entry(plan.ensemble, f"{cfg.ensembler} predictions (test)",
                         missing=not plan.ensemble.is_file())
        if not ensemble.missing:
            ensemble.reasons.append(f"{UPSTREAM} ({folder} is missing)")
    else:
        assert manifest is not None
        ensemble = _prediction(plan.ensemble, f"{cfg.ensembler} predictions (test)",
                               ensembler, lambda: provenance.of_model(reg, ensembler, fitted),
                               test_preds)
        _stale_upstream(ensemble, [trained, *(e for e in entries if str(e.path) in test_preds)])
    entries.append(ensemble)

    scores = Entry(plan.scores, "scores")
    if not plan.scores.is_file():
        scores.missing = True
    elif problem := _scores_problem(plan.scores, [*cfg.models, "ensemble"]):
        scores.reasons.append(problem)
    else:
        inputs = [ensemble, *[e for e in entries if str(e.path) in test_preds]]
        made = plan.scores.stat().st_mtime
        behind = [str(e.path) for e in inputs if e.state != "fresh"
                  or e.path.stat().st_mtime > made]
        if behind:
            scores.reasons.append(f"{UPSTREAM} ({', '.join(behind)})")
    entries.append(scores)
    return entries


def _scores_problem(path: Path, labels: list[str]) -> str | None:
    """Why a scores file is not a score table of ``labels`` (as `kmodel score` writes it)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return "unreadable"
    if not isinstance(data, dict) or sorted(data) != sorted(labels):
        return f"not a score table of {', '.join(labels)}"

    def fraction(v: object) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1

    for label, row in data.items():
        if not (isinstance(row, dict) and (row.get("auc") is None or fraction(row["auc"]))
                and fraction(row.get("accuracy")) and isinstance(row.get("rows"), int)):
            return f"its scores of {label} are not numbers as `kmodel score` writes them"
    return None


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
