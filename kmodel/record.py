"""What a prediction file records: one typed record, kept in the root attributes of its HDF5
file (readable with h5py alone) and read back through ``PredictionRecord.from_attrs``.

A record says which model made the file (``Made``: the sha256 of its spec, code, weights
and env lock, and kmodel's version), from what (the input's sha256 and the rows it covers,
or for the ensemble the sha256 of every upstream prediction file), with what settings
(batch size, env) and how far the writing got. predict writes it, ``--resume`` and merge
compare it, status and verify check it against the files as they are now. Files of other
tools (Kipoi's) have no record: every field is then None and ``known`` is False.

Files a record names (the input, the weights folder, upstream files) are recorded relative
to the folder of the file that records them, so a moved or copied project points to its
own files, never to the original's; absolute paths (an older kmodel's) are read as they are.

The layout's ``schema_version`` is checked on read: a file of a newer schema is KM406.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, TypeGuard

from kmodel.errors import NewerFormatError

# kmodel/io/hdf5.py (which holds the layout's names) is imported where a record is read or
# written: importing h5py costs 100 ms that `kmodel predict` spends alongside the runner


_SIGNED = re.compile(r"(.*)\|((?:\d+\|){4}\d+)?")


def split_signature(recorded: str) -> tuple[str, str]:
    """``(path, file signature)`` of an ``input_signature`` (``PATH|SIZE|MTIME|CTIME|DEV|INO``,
    or ``PATH|`` where no signature is kept)."""
    found = _SIGNED.fullmatch(recorded)
    return (found.group(1), found.group(2) or "") if found else (recorded, "")


def relative(target: str | Path, near: str | Path) -> str:
    """How a record names ``target``: relative to the folder ``near`` (where the recording
    file is, or the recording folder itself)."""
    return os.path.relpath(os.path.realpath(target), os.path.realpath(near))


def resolve(recorded: str, near: str | Path) -> Path:
    """The file a record names, relative to the folder ``near`` (absolute: as it is)."""
    path = Path(recorded)
    return path if path.is_absolute() else Path(os.path.normpath(Path(near).absolute() / path))


@dataclass(frozen=True, kw_only=True)
class Made:
    """What a model's output was made by; any change makes the output stale."""

    kmodel_version: str
    spec_sha256: str
    code_sha256: str
    weights_sha256: str  # the digest of the weights' manifest ("" for none)
    lock_sha256: str  # the env's lockfile ("" when not locked)

    #: each field, as `kmodel status` and `kmodel verify` name it
    REASONS: ClassVar[dict[str, str]] = {
        "spec_sha256": "spec",
        "code_sha256": "model code",
        "weights_sha256": "weights",
        "lock_sha256": "env lock",
        "kmodel_version": "kmodel version",
    }

    def to_attrs(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> dict[str, Any]:
        """The recorded values (None where absent), for comparing with a ``Made``."""
        return {f.name: attrs.get(f.name) for f in fields(cls)}

    def differences(self, recorded: Mapping[str, Any]) -> list[tuple[str, Any, str]]:
        """(reason, recorded, now) for each field ``recorded`` holds differently."""
        return [(self.REASONS[k], recorded.get(k), v) for k, v in self.to_attrs().items()
                if recorded.get(k) != v]

    def reasons(self, recorded: Mapping[str, Any]) -> list[str]:
        return [reason for reason, _, _ in self.differences(recorded)]


#: the fields whose type a record checks on read, by attribute name
_INTS = ("batch_size", "rows_start", "rows_stop", "input_rows", "merged_shards", "folds",
         "threads")
_STRS = ("model", "model_version", "env_key", "weights_dir", "input_signature",
         "input_sha256", "created", "env_python_version", "env_numpy_version", "device")


def _whole(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _typed(attrs: Mapping[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """The attributes of known names and types, and the names of those of another type."""
    values: dict[str, Any] = {}
    bad = set()
    for key in (*_INTS, *_STRS):
        if key in attrs:
            value = attrs[key]
            if _whole(value) if key in _INTS else isinstance(value, str):
                values[key] = value
            else:
                bad.add(key)
    return values, bad


def _upstream(value: Any) -> dict[str, str] | None:
    """The recorded {path: sha256} of upstream files (a JSON object), or None if it is not."""
    try:
        parsed = json.loads(str(value))
    except ValueError:
        return None
    if isinstance(parsed, dict) and all(isinstance(v, str) for v in parsed.values()):
        return {str(k): v for k, v in parsed.items()}
    return None


@dataclass(frozen=True, kw_only=True)
class PredictionRecord:
    """The root attributes of a prediction file, typed. A value of the wrong type (a
    damaged or hostile file) reads as None and is named in ``bad``."""

    model: str | None = None
    model_version: str | None = None
    made: dict[str, Any] = field(default_factory=dict)  # as recorded: Made.from_attrs
    env_key: str | None = None
    batch_size: int | None = None
    weights_dir: str | None = None
    rows_start: int | None = None
    rows_stop: int | None = None
    input_rows: int | None = None
    input_signature: str | None = None  # "<absolute path>|<file signature>" at prediction
    input_sha256: str | None = None
    upstream_sha256: dict[str, str] | None = None  # the ensemble's: {path: sha256}
    created: str | None = None
    env_python_version: str | None = None
    env_numpy_version: str | None = None
    merged_shards: int | None = None
    #: out-of-fold predictions gathered from this many folds (each row predicted by a
    #: model that was not trained on it)
    folds: int | None = None
    rows_done: int | None = None
    #: the CPU threads (0: the libraries' default) and the device the model ran with
    threads: int | None = None
    device: str | None = None
    complete: bool = False
    schema_version: int | None = None
    bad: frozenset[str] = frozenset()
    #: the folder of the file the record was read from (its paths are relative to it)
    near: str = ""

    #: what every shard of one prediction shares (merge refuses shards that differ)
    SAME_PREDICTION: ClassVar[tuple[str, ...]] = (
        "model", "model_version", *Made.REASONS, "env_key", "input_sha256", "input_rows",
        "batch_size")
    #: what a partial file must share with the run that continues it (--resume)
    SAME_RUN: ClassVar[tuple[str, ...]] = (
        "model", "spec_sha256", "code_sha256", "weights_sha256", "lock_sha256", "batch_size",
        "rows_start", "rows_stop")

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], source: str | Path = "") -> PredictionRecord:
        """The record of a file's root attributes (from ``hdf5.read_attrs``); KM406 for a
        file of a newer schema than this kmodel reads."""
        from kmodel.io.hdf5 import COMPLETE, ROWS_DONE, SCHEMA_VERSION

        version = attrs.get("schema_version")
        if _whole(version) and version > SCHEMA_VERSION:
            raise NewerFormatError(source, "prediction file schema", version, SCHEMA_VERSION)
        values, bad = _typed(attrs)
        done = attrs.get(ROWS_DONE)
        if _whole(done):
            values["rows_done"] = done
        elif done is not None:
            bad.add("rows_done")
        if "upstream_sha256" in attrs:
            if (upstream := _upstream(attrs["upstream_sha256"])) is not None:
                values["upstream_sha256"] = upstream
            else:
                bad.add("upstream_sha256")
        return cls(**values, made=Made.from_attrs(attrs), complete=bool(attrs.get(COMPLETE)),
                   schema_version=version if _whole(version) else None, bad=frozenset(bad),
                   near=os.path.dirname(os.path.abspath(source)) if source else "")

    def to_attrs(self) -> dict[str, Any]:
        """The root attributes (None values left out; the writer adds rows done/complete)."""
        out: dict[str, Any] = {k: v for k, v in self.made.items() if v is not None}
        for key in (*_INTS, *_STRS):
            if (value := getattr(self, key)) is not None:
                out[key] = value
        if self.upstream_sha256 is not None:
            out["upstream_sha256"] = json.dumps(self.upstream_sha256, sort_keys=True)
        return out

    def value(self, key: str) -> Any:
        """A field by its attribute name (a ``Made`` field too)."""
        return self.made.get(key) if key in Made.REASONS else getattr(self, key)

    def first_difference(self, other: PredictionRecord, keys: tuple[str, ...]) -> str | None:
        return next((k for k in keys if self.value(k) != other.value(k)), None)

    @property
    def known(self) -> bool:
        """Written by kmodel (a model and its spec's hash are recorded)."""
        return self.model is not None and self.made.get("spec_sha256") is not None

    @property
    def input_path(self) -> Path | None:
        """The input file the predictions were made from (found from the file's folder)."""
        if not self.input_signature:
            return None
        return resolve(split_signature(self.input_signature)[0], self.near or ".")

    @property
    def weights_folder(self) -> Path | None:
        """The weights folder the predictions were made with (None: none recorded)."""
        return resolve(self.weights_dir, self.near or ".") if self.weights_dir else None

    def upstream_files(self) -> dict[Path, str]:
        """The ensemble's upstream files (found from the file's folder) and their sha256."""
        return {resolve(k, self.near or "."): v for k, v in (self.upstream_sha256 or {}).items()}

    @property
    def rows_recorded(self) -> bool:
        """The row range and the rows done are numbers (if recorded at all)."""
        return not ({"rows_start", "rows_stop", "input_rows", "rows_done"} & self.bad)

    def same_rows_as(self, other: PredictionRecord) -> bool:
        """Both are whole, finished predictions of the same rows of the same input: then
        they hold its ids in its order (a cheap probe confirms it)."""
        keys = ("input_sha256", "rows_start", "rows_stop")
        return self.complete and other.complete and all(
            self.value(k) is not None and self.value(k) == other.value(k) for k in keys)

    def merged(self, shards: int, rows: int, created: str, near: str | Path
               ) -> PredictionRecord:
        """The record of the file that merges ``shards`` shards of this prediction, written
        in the folder ``near`` (the files it names, named from there)."""
        signature = None
        if self.input_signature and self.input_path is not None:
            signature = f"{relative(self.input_path, near)}|" \
                        f"{split_signature(self.input_signature)[1]}"
        upstream = {relative(p, near): d for p, d in self.upstream_files().items()}
        return replace(self, rows_start=0, rows_stop=rows, merged_shards=shards,
                       created=created, rows_done=None, complete=False,
                       input_signature=signature or self.input_signature,
                       weights_dir=relative(self.weights_folder, near) if self.weights_folder
                       else self.weights_dir,
                       upstream_sha256=upstream if self.upstream_sha256 is not None else None)


def finished(input_sha256: str, upstream: Mapping[str, str] | None, created: str,
             near: str | Path) -> dict[str, Any]:
    """The attributes a prediction gets once every row is written and checked (its
    ``upstream`` files named relative to the folder ``near`` it is written in)."""
    record = PredictionRecord(input_sha256=input_sha256, created=created,
                              upstream_sha256={relative(k, near): v for k, v in upstream.items()}
                              if upstream else None)
    return record.to_attrs()


def read(path: Path) -> PredictionRecord:
    """The record of the prediction file at ``path`` (OSError if unreadable)."""
    from kmodel.io import hdf5

    return PredictionRecord.from_attrs(hdf5.read_attrs(path), path)


__all__ = ["Made", "PredictionRecord", "finished", "read"]
