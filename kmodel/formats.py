"""The JSON files kmodel writes, each with its kind and format version, and their one reader.

Every document starts with ``"kmodel_format": KIND`` and ``"format_version": N``. Reading
one returns its version and body; the module that owns the kind keeps a reader per version
(version 0 is a file of an older kmodel, written before documents carried a version). A
file of a version newer than this kmodel knows is a clear error (KM406), never a guess.

The kinds: ``weights-manifest`` (hashes.json in a trained weights folder),
``weights-record`` (provenance.json there: what the weights were trained from),
``params`` (params.json beside weights), ``scores`` (a score table), ``env-marker`` (a
built env's completion marker), ``env-record`` (`kmodel env create --record`) and
``bundle-manifest`` (manifest.json in a bundle).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kmodel._fs import atomic_write_text
from kmodel.errors import InputSchemaError, NewerFormatError

KIND, VERSION = "kmodel_format", "format_version"
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
    """``body`` as a document of ``kind`` in the current version."""
    return {KIND: kind, VERSION: CURRENT[kind], **body}


def dumps(kind: str, body: dict[str, Any]) -> str:
    return json.dumps(document(kind, body), indent=2, sort_keys=True) + "\n"


def write(path: Path, kind: str, body: dict[str, Any]) -> None:
    """Write the document atomically (it appears whole or not at all)."""
    atomic_write_text(path, dumps(kind, body))


def parse(data: Any, kind: str, source: str | Path) -> tuple[int, dict[str, Any]]:
    """The version and body of a decoded document of ``kind``: 0 for a mapping without a
    version (an older kmodel's file, for the kind's own reader to interpret); an error for
    another kind or a newer version."""
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
    return version, {k: v for k, v in data.items() if k not in (KIND, VERSION)}


def loads(text: str | bytes, kind: str, source: str | Path) -> tuple[int, dict[str, Any]]:
    try:
        data = json.loads(text)
    except ValueError as e:
        raise InputSchemaError(f"{source}: not JSON ({e}); make it again with kmodel") from None
    return parse(data, kind, source)


def read(path: Path, kind: str) -> tuple[int, dict[str, Any]]:
    """The version and body of the document at ``path``; OSError if it cannot be read."""
    return loads(path.read_bytes(), kind, path)


__all__ = ["CURRENT", "document", "dumps", "loads", "parse", "read", "write"]
