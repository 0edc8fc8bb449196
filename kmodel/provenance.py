"""Provenance: what a stored output was made from, recorded when it is written and compared
when it is read again (``--resume``, ``kmodel status``, ``kmodel verify``).

A prediction file records it as its root attributes (kmodel/record.py). A weights folder
kmodel trained records it in ``provenance.json`` (a ``weights-record`` document): what made
it (``Made``), the sha256 of every file it was trained on, and the models whose
predictions an ensembler takes, in order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kmodel import formats
from kmodel._fs import cached_sha256, check_input_file, sha256_file
from kmodel._version import __version__
from kmodel.errors import InputSchemaError, KmodelError, ValuesChangedError
from kmodel.record import Made, PredictionRecord, relative
from kmodel.registry import Model, Registry
from kmodel.weights import RECORD, Weights, read_manifest

if TYPE_CHECKING:
    import numpy as np


def code_sha256(model: Model) -> str:
    """One digest of the model's code: every .py file of its folder, by name and content."""
    h = hashlib.sha256()
    for path in sorted(model.folder.rglob("*.py")):
        rel = path.relative_to(model.folder)
        if any(part.startswith((".", "__pycache__")) for part in rel.parts):
            continue
        h.update(rel.as_posix().encode() + b"\0" + sha256_file(path).encode() + b"\0")
    return h.hexdigest()


def of_model(registry: Registry, model: Model, weights: Weights | None) -> Made:
    """What the model's outputs must record now (everything but their inputs)."""
    ref = registry.env_of(model)
    return Made(kmodel_version=__version__, spec_sha256=sha256_file(model.path),
                code_sha256=code_sha256(model),
                weights_sha256=weights.digest if weights else "",
                lock_sha256=sha256_file(ref.lockfile) if ref.lockfile.is_file() else "")


def upstream(files: Sequence[Path], near: Path | None = None) -> dict[str, str]:
    """{path: sha256} of every file a composer step read (compared by content later); the
    paths relative to the folder ``near`` where the record is kept (None: absolute)."""
    return {relative(p, near) if near is not None else str(p.resolve()): cached_sha256(p)
            for p in files}


def incomplete(record: PredictionRecord, model: Model, rows: int,
               input_rows: int | None = None) -> str | None:
    """Why a prediction file (its ``record``, and the ``rows`` its /preds datasets hold) is
    not a whole prediction of ``model`` over ``input_rows`` rows (default: those recorded),
    or None."""
    if record.model != model.name:
        return f"made by model {record.model!r}, not {model.name!r}"
    if not record.complete:
        return "incomplete (the run that wrote it did not finish)"
    if not record.rows_recorded:
        return "its row range attributes are not numbers"
    start = record.rows_start or 0
    stop = rows if record.rows_stop is None else record.rows_stop
    total = input_rows if input_rows is not None else (
        rows if record.input_rows is None else record.input_rows)
    done = -1 if record.rows_done is None else record.rows_done
    if (start, stop) != (0, total):
        return f"a shard (rows {start}:{stop} of {total}); merge the shards with kmodel merge"
    if rows != total or done != total:
        return f"{rows} rows ({done} recorded as written) of {total}"
    return None


def layout_problem(path: Path, model: Model) -> tuple[str | None, int]:
    """Why the /preds datasets of ``path`` are not the spec's outputs (None if they are),
    and the rows they hold."""
    from kmodel.io import hdf5

    try:
        found, rows = hdf5.describe(path, "preds")
    except (OSError, ValueError) as e:
        return f"unreadable ({e})", 0
    want = {o.name for o in model.spec.outputs}
    if set(found) != want:
        return f"datasets {sorted(found)} in /preds, the spec's outputs are {sorted(want)}", rows
    return None, rows


def whole(path: Path, record: PredictionRecord, model: Model,
          input_rows: int | None = None) -> str | None:
    """Why the prediction file at ``path`` is not a whole prediction of ``model``, looking
    at the datasets themselves, not only at what the record claims; or None."""
    if record.model != model.name:
        return incomplete(record, model, 0)
    problem, rows = layout_problem(path, model)
    return problem or incomplete(record, model, rows, input_rows)


# --- the record of a trained weights folder -------------------------------------------


@dataclass(frozen=True)
class TrainedOn:
    """The rows a model was trained on: the input file's sha256, and a sorted 64-bit hash of
    each row's id (so that any other file's rows can be checked against them)."""

    input_sha256: str
    rows: int
    ids_fnv1a64: str  # base64 of the sorted hashes, little-endian uint64

    @classmethod
    def of(cls, path: Path, ids: np.ndarray) -> TrainedOn:
        import base64

        import numpy as np

        from kmodel.io.hdf5 import id_hashes

        hashes = np.sort(id_hashes(ids)).astype("<u8")
        return cls(cached_sha256(path), len(ids), base64.b64encode(hashes.tobytes()).decode())

    def hashes(self) -> np.ndarray:
        import base64

        import numpy as np

        return np.frombuffer(base64.b64decode(self.ids_fnv1a64), "<u8")

    def overlap(self, ids: np.ndarray) -> tuple[int, str | None]:
        """How many of ``ids`` (bytes) are rows this was trained on, and the first of them."""
        import numpy as np

        seen = self.hashes()
        if not len(seen) or not len(ids):
            return 0, None
        from kmodel.io.hdf5 import id_hashes

        mine = id_hashes(ids)
        pos = np.minimum(np.searchsorted(seen, mine), len(seen) - 1)
        hit = seen[pos] == mine
        first = bytes(ids[hit][0]).decode(errors="replace") if hit.any() else None
        return int(hit.sum()), first


@dataclass(frozen=True)
class FolderRecord:
    """What a trained weights folder was made from (its provenance.json)."""

    made: dict[str, Any] = field(default_factory=dict)  # Made's fields, as recorded
    upstream_sha256: dict[str, str] = field(default_factory=dict)
    #: an ensembler's inputs: ``model:output,...`` of each prediction file, in order
    sources: list[str] | None = None
    trained_on: TrainedOn | None = None
    #: an ensembler's weight per input column, if it says (``column_weights()``)
    column_weights: list[float] | None = None
    #: how the ensembler's rows were kept apart from the base models' (cv, holdout, ...)
    stacking: str | None = None
    #: an ensembler's task, classes, chosen outputs and passthrough inputs (compose apply
    #: uses the same)
    task: str | None = None
    classes: list[Any] | None = None
    outputs: dict[str, str] | None = None
    passthrough: list[str] | None = None
    #: what the ensembler said of its fit (``fit_report()``): e.g. its cross-validated loss
    fit_report: dict[str, Any] | None = None
    #: the CPU threads (0: the libraries' default) and the device it was trained with
    threads: int | None = None
    device: str | None = None

    def text(self) -> str:
        body = asdict(self)
        for key in ("threads", "device"):  # not recorded: left out (older records' bytes)
            if body[key] is None:
                del body[key]
        body["trained_on"] = None if self.trained_on is None else asdict(self.trained_on)
        return formats.dumps("weights-record", body)


def folder_record(made: Made, upstream_files: Mapping[str, str],
                  sources: list[str] | None = None, stacking: str | None = None
                  ) -> FolderRecord:
    return FolderRecord(made.to_attrs(), dict(upstream_files), sources, stacking=stacking)


def read_folder_record(folder: Path, *, verify: bool = True) -> FolderRecord | None:
    """The folder's record, or None if it has none that can be read. Version 0 (an older
    kmodel's) is a flat mapping, its sources in a sources.json beside it. A record edited
    after kmodel wrote it is ValuesChangedError (unless not ``verify``)."""
    try:
        version, found = formats.read(folder / RECORD, "weights-record", verify=verify)
    except OSError:  # an older kmodel's ensembler may have a sources.json alone
        version, found = 0, {}
    body = _folder_record_v0(folder, found) if version == 0 else found
    if body is None:
        return None
    made, files, sources = body.get("made"), body.get("upstream_sha256"), body.get("sources")
    if not isinstance(made, dict) or not isinstance(files, dict) or not (
            sources is None or isinstance(sources, list)):
        return None
    trained, weights = body.get("trained_on"), body.get("column_weights")
    try:
        trained_on = TrainedOn(**trained) if isinstance(trained, dict) else None
    except TypeError:
        trained_on = None
    def typed(key: str, kind: type) -> Any:
        return body.get(key) if isinstance(body.get(key), kind) else None

    return FolderRecord(made, {str(k): str(v) for k, v in files.items()},
                        [str(s) for s in sources] if sources is not None else None,
                        trained_on,
                        [float(w) for w in weights] if isinstance(weights, list) else None,
                        typed("stacking", str), typed("task", str), typed("classes", list),
                        typed("outputs", dict), typed("passthrough", list),
                        typed("fit_report", dict), typed("threads", int), typed("device", str))


def _folder_record_v0(folder: Path, body: dict[str, Any]) -> dict[str, Any] | None:
    """An older kmodel's record: flat (upstream_sha256 a JSON string), its sources in a
    sources.json beside it; None if the folder has neither."""
    try:
        sources = json.loads((folder / "sources.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        sources = None
    if not body and sources is None:
        return None
    try:
        files = json.loads(str(body.get("upstream_sha256", "{}")))
    except ValueError:
        files = {}
    # an older kmodel's ensembler was binary only
    return {"made": Made.from_attrs(body), "upstream_sha256": files, "sources": sources,
            "task": "binary" if sources is not None else None}


# --- kmodel verify ---------------------------------------------------------------------

Check = tuple[str, bool, str]  # what, matches, detail


def verify(registry: Registry, path: Path) -> list[Check]:
    """Recompute what prediction file ``path`` records: (what, matches, detail) for the
    model's spec, code, weights, env lock, input (or upstream files) and completeness."""
    from kmodel import record as records

    check_input_file(path)
    try:
        record = records.read(path)
    except (OSError, RuntimeError) as e:
        raise InputSchemaError(f"{path}: not an HDF5 file ({e}); give a prediction file "
                               "kmodel wrote") from None
    if not record.known:
        raise InputSchemaError(f"{path}: no kmodel provenance (no model or spec_sha256 "
                               "attribute); verify checks files written by kmodel predict")
    try:
        model = registry.model(str(record.model))
    except KmodelError as e:
        return [("model", False, str(e))]
    problem = whole(path, record, model)
    checks = [("complete", problem is None,
               problem or f"{record.rows_done} rows, every output of the spec")]
    from kmodel import checksums  # (h5py: not before a predict's runner has started)

    changed = checksums.problems(path)
    checks.append(("values", not changed, "; ".join(changed) if changed else
                   "every dataset matches the checksum recorded as it was written"))
    folder, weights = record.weights_folder, None
    try:
        if folder is not None and not folder.is_dir():
            checks.append(("weights folder", False, f"{folder} is missing"))
        elif folder is not None and read_manifest(folder):  # weights kmodel trained
            weights = Weights.from_folder(folder)
        else:
            weights = Weights.of(model)
    except ValuesChangedError as e:
        checks.append(("weights folder", False, e.message))
    for reason, then, now in _all_fields(of_model(registry, model, weights), record.made):
        checks.append((reason, then == now, f"recorded {str(then)[:16]}, now {now[:16]}"
                       if then != now else str(now)[:16]))
    if weights is not None:
        bad = [name for name, _ in weights.problems()]
        checks.append(("weight files", not bad, f"differ from their manifest: {bad}" if bad
                       else f"{len(weights.sha256)} files match"))
    return [*checks, _inputs_check(record)]


def _all_fields(made: Made, recorded: Mapping[str, Any]) -> list[tuple[str, Any, str]]:
    return [(Made.REASONS[k], recorded.get(k), v) for k, v in made.to_attrs().items()]


def _inputs_check(record: PredictionRecord) -> Check:
    """The input file (or, for the ensemble, the upstream files) against their hashes."""
    if "upstream_sha256" in record.bad:
        return ("upstream files", False, "upstream_sha256 is not a JSON object")
    if record.upstream_sha256 is not None:
        then = record.upstream_files()
        changed = [str(p) for p, d in then.items() if not p.is_file() or cached_sha256(p) != d]
        return ("upstream files", not changed, f"changed or missing: {changed}"
                if changed else f"{len(then)} files match")
    source = record.input_path or Path("")
    if not source.is_file():
        return ("input", False, f"{source} is missing")
    now = cached_sha256(source)
    same = now == record.input_sha256
    return ("input", same, f"{source}: " + (
        now[:16] if same else f"recorded {str(record.input_sha256)[:16]}, now {now[:16]}"))


__all__ = [
    "FolderRecord",
    "TrainedOn",
    "code_sha256",
    "folder_record",
    "incomplete",
    "of_model",
    "read_folder_record",
    "upstream",
    "verify",
    "whole",
]
