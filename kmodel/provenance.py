"""Provenance: what a stored output was made from, recorded when it is written and compared
when it is read again (``--resume``, ``kmodel status``, ``kmodel verify``).

A prediction file records, as root attributes, the sha256 of the model's spec, of its code
(every .py file in the model's folder), of its weights (the digest of their manifest), of
the env's lockfile and of the input file, and kmodel's version. The ensembler's weights
folder records the same in ``provenance.json``, with the sha256 of every prediction file it
was trained on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kmodel import __version__
from kmodel._fs import cached_sha256, sha256_file
from kmodel.registry import Model, Registry
from kmodel.weights import Weights

#: the recorded keys, and the word `kmodel status` uses when one no longer matches
REASONS = {
    "spec_sha256": "spec",
    "code_sha256": "model code",
    "weights_sha256": "weights",
    "lock_sha256": "env lock",
    "input_sha256": "input",
    "kmodel_version": "kmodel version",
}
FOLDER_RECORD = "provenance.json"


def code_sha256(model: Model) -> str:
    """One digest of the model's code: every .py file of its folder, by name and content."""
    h = hashlib.sha256()
    for path in sorted(model.folder.rglob("*.py")):
        rel = path.relative_to(model.folder)
        if any(part.startswith((".", "__pycache__")) for part in rel.parts):
            continue
        h.update(rel.as_posix().encode() + b"\0" + sha256_file(path).encode() + b"\0")
    return h.hexdigest()


def of_model(registry: Registry, model: Model, weights: Weights | None) -> dict[str, str]:
    """What the model's outputs must record now (everything but the input)."""
    ref = registry.env_of(model)
    return {
        "kmodel_version": __version__,
        "spec_sha256": sha256_file(model.path),
        "code_sha256": code_sha256(model),
        "weights_sha256": weights.digest if weights else "",
        "lock_sha256": sha256_file(ref.lockfile) if ref.lockfile.is_file() else "",
    }


def differences(recorded: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """The reasons (spec, model code, ...) for which ``recorded`` no longer matches."""
    return [REASONS.get(key, key) for key, value in expected.items()
            if recorded.get(key) != value]


def incomplete(path: Path, attrs: Mapping[str, Any], model: Model,
               input_rows: int | None = None) -> str | None:
    """Why prediction file ``path`` (with root ``attrs``) is not a whole prediction of
    ``model`` (over ``input_rows`` rows when given, else the rows it records), or None.
    Looks at the datasets themselves, not only at what the attributes claim."""
    from kmodel.io import hdf5

    if attrs.get("model") != model.name:
        return f"made by model {attrs.get('model')!r}, not {model.name!r}"
    if not attrs.get(hdf5.COMPLETE):
        return "incomplete (the run that wrote it did not finish)"
    try:
        found, rows = hdf5.describe(path, "preds")
    except (OSError, ValueError) as e:
        return f"unreadable ({e})"
    want = {o.name for o in model.spec.outputs}
    if set(found) != want:
        return f"datasets {sorted(found)} in /preds, the spec's outputs are {sorted(want)}"
    try:
        start, stop = int(attrs.get("rows_start", 0)), int(attrs.get("rows_stop", rows))
        total = int(attrs.get("input_rows", rows)) if input_rows is None else input_rows
        done = int(attrs.get(hdf5.ROWS_DONE, -1))
    except (TypeError, ValueError):
        return "its row range attributes are not numbers"
    if (start, stop) != (0, total):
        return f"a shard (rows {start}:{stop} of {total}); merge the shards with kmodel merge"
    if rows != total or done != total:
        return f"{rows} rows ({done} recorded as written) of {total}"
    return None


def input_record(path: Path) -> dict[str, str]:
    return {"input_sha256": cached_sha256(path)}


def write_folder_record(folder: Path, record: Mapping[str, Any]) -> None:
    (folder / FOLDER_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def read_folder_record(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / FOLDER_RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def verify(registry: Registry, path: Path) -> list[tuple[str, bool, str]]:
    """Recompute what prediction file ``path`` records: (what, matches, detail) for the
    model's spec, code, weights, env lock, input (or upstream files) and completeness."""
    from kmodel.errors import InputSchemaError, KmodelError
    from kmodel.io import hdf5

    try:
        attrs = hdf5.read_attrs(path)
    except (OSError, RuntimeError) as e:
        raise InputSchemaError(f"{path}: not an HDF5 file ({e}); give a prediction file "
                               "kmodel wrote") from None
    if "model" not in attrs or "spec_sha256" not in attrs:
        raise InputSchemaError(f"{path}: no kmodel provenance (no model or spec_sha256 "
                               "attribute); verify checks files written by kmodel predict")
    checks: list[tuple[str, bool, str]] = []
    try:
        model = registry.model(str(attrs.get("model")))
    except KmodelError as e:
        return [("model", False, str(e))]
    problem = incomplete(path, attrs, model)
    checks.append(("complete", problem is None,
                   problem or f"{attrs.get(hdf5.ROWS_DONE)} rows, every output of the spec"))
    folder = attrs.get("weights_dir")
    weights = Weights.from_folder(Path(folder)) if folder and (
        Path(folder) / "hashes.json").is_file() else Weights.of(model)
    for key, now in of_model(registry, model, weights).items():
        then = attrs.get(key)
        checks.append((REASONS[key], then == now, f"recorded {str(then)[:16]}, now {now[:16]}"
                       if then != now else str(now)[:16]))
    if weights is not None:
        bad = [n for n, d in weights.sha256.items() if not (weights.folder / n).is_file()
               or sha256_file(weights.folder / n) != d]
        checks.append(("weight files", not bad, f"differ from their manifest: {bad}" if bad
                       else f"{len(weights.sha256)} files match"))
    if "upstream_sha256" in attrs:
        try:
            then = json.loads(str(attrs["upstream_sha256"]))
        except ValueError:
            then = None
        if not isinstance(then, dict):
            return [*checks, ("upstream files", False, "upstream_sha256 is not a JSON object")]
        changed = [p for p, d in then.items() if not Path(p).is_file()
                   or cached_sha256(Path(p)) != d]
        checks.append(("upstream files", not changed, f"changed or missing: {changed}"
                       if changed else f"{len(then)} files match"))
    else:
        source = Path(str(attrs.get("input_signature", "")).split("|")[0])
        if not source.is_file():
            checks.append(("input", False, f"{source} is missing"))
        else:
            now = cached_sha256(source)
            checks.append(("input", now == attrs.get("input_sha256"), f"{source}: " + (
                now[:16] if now == attrs.get("input_sha256") else
                f"recorded {str(attrs.get('input_sha256'))[:16]}, now {now[:16]}")))
    return checks
