"""The JSON files kmodel writes, each with its kind and format version, and their one reader.

Every document starts with ``"kmodel_format": KIND`` and ``"format_version": N``, and
carries ``"content_sha256"``: the sha256 of the rest, so that a document edited after
kmodel wrote it is found (KM407) rather than trusted. Reading one returns its version and
body; the module that owns the kind keeps a reader per version
(version 0 is a file of an older kmodel, written before documents carried a version). A
file of a version newer than this kmodel knows is a clear error (KM406), never a guess.

The kinds: ``weights-manifest`` (hashes.json in a trained weights folder),
``weights-record`` (provenance.json there: what the weights were trained from),
``params`` (params.json beside weights), ``scores`` (a score table), ``env-marker`` (a
built env's completion marker), ``env-record`` (`kmodel env create --record`) and
``bundle-manifest`` (manifest.json in a bundle).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from kmodel._fs import atomic_write_text
from kmodel.errors import InputSchemaError, NewerFormatError, ValuesChangedError

KIND, VERSION, CHECKSUM = "kmodel_format", "format_version", "content_sha256"
#: the version of each kind this kmodel writes (and the newest it reads)
CURRENT = {
    "weights-manifest": 1,
    "weights-record": 1,
    "params": 1,
    "scores": 2,
    "env-marker": 1,
    "env-record": 1,
    "bundle-manifest": 2,
}


def document(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` as a document of ``kind`` in the current version, with its checksum."""
    doc = {KIND: kind, VERSION: CURRENT[kind], **body}
    return {**doc, CHECKSUM: _digest(doc)}


def _digest(doc: dict[str, Any]) -> str:
    """sha256 of the document without its checksum, as canonical JSON (so indentation and
    key order do not count, and every value does)."""
    rest = {k: v for k, v in doc.items() if k != CHECKSUM}
    text = json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def dumps(kind: str, body: dict[str, Any]) -> str:
    return json.dumps(document(kind, body), indent=2, sort_keys=True) + "\n"


def write(path: Path, kind: str, body: dict[str, Any]) -> None:
    """Write the document atomically (it appears whole or not at all)."""
    atomic_write_text(path, dumps(kind, body))


def parse(data: Any, kind: str, source: str | Path, *, verify: bool = True
          ) -> tuple[int, dict[str, Any]]:
    """The version and body of a decoded document of ``kind``: 0 for a mapping without a
    version (an older kmodel's file, for the kind's own reader to interpret); an error for
    another kind or a newer version, and (``verify``) for a document whose content differs
    from its checksum. A document without one (an older kmodel's, or one whose checksum
    a user deleted to keep a hand edit) is read as it is."""
    if not isinstance(data, dict):
        raise InputSchemaError(f"{source}: not a kmodel {kind} file (a JSON object was "
                               "expected); make it again with kmodel")
    if VERSION not in data and KIND not in data:
        return 0, data
    found, version = data.get(KIND), data.get(VERSION)
    if found != kind:
        raise InputSchemaError(f"{source}: a kmodel {found!r} file, not {kind!r}; give the "
                               f"{kind} file")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InputSchemaError(f"{source}: format_version {version!r} is not a positive "
                               "whole number; make the file again with kmodel")
    if version > CURRENT[kind]:
        raise NewerFormatError(source, kind, version, CURRENT[kind])
    if verify and CHECKSUM in data and data[CHECKSUM] != _digest(data):
        raise ValuesChangedError(f"{source}: edited after kmodel wrote it (its {CHECKSUM} "
                                 "differs); make it again with kmodel, or delete the "
                                 f"{CHECKSUM} line to keep the edit")
    return version, {k: v for k, v in data.items() if k not in (KIND, VERSION, CHECKSUM)}


def signed(data: Any) -> bool:
    """The decoded document carries a checksum (every document this kmodel writes does)."""
    return isinstance(data, dict) and CHECKSUM in data


def loads(text: str | bytes, kind: str, source: str | Path, *, verify: bool = True
          ) -> tuple[int, dict[str, Any]]:
    try:
        data = json.loads(text)
    except ValueError as e:
        raise InputSchemaError(f"{source}: not JSON ({e}); make it again with kmodel") from None
    return parse(data, kind, source, verify=verify)


def read(path: Path, kind: str, *, verify: bool = True) -> tuple[int, dict[str, Any]]:
    """The version and body of the document at ``path``; OSError if it cannot be read;
    ValuesChangedError (``verify``) if it was edited after kmodel wrote it."""
    return loads(path.read_bytes(), kind, path, verify=verify)


__all__ = ["CURRENT", "document", "dumps", "loads", "parse", "read", "signed", "write"]
