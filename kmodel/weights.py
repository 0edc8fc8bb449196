"""Weights folders: params.json plus one .npy per named weight, and their manifest.

A model's shipped weights are listed, with the sha256 of each file, in its spec; weights
trained by kmodel carry the same list in the folder itself (``hashes.json``). The manifest
is also how kmodel knows a folder is its own: it replaces a weights folder only when every
file in it is one the manifest names.
"""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass
from pathlib import Path

from kmodel._fs import sha256_bytes, sha256_file
from kmodel.errors import (
    HashMismatchError,
    NotTrainedError,
    WeightsMissingError,
    WeightsNotHashedError,
)
from kmodel.registry import Model

MANIFEST = "hashes.json"


@dataclass(frozen=True)
class Weights:
    """A weights folder and the sha256 of each of its files."""

    folder: Path
    sha256: dict[str, str]
    #: the hashes are the spec's (else a hashes.json that kmodel wrote beside the files)
    in_spec: bool = True

    def fix(self, model: str) -> str:
        """How to repair a weight file that no longer matches its hash."""
        if self.in_spec:
            return f"restore the file or run `kmodel hash {model} --write`"
        return f"restore the file, or make {self.folder} again ({MANIFEST} there lists it)"

    @property
    def digest(self) -> str:
        return sha256_bytes(json.dumps(self.sha256, sort_keys=True).encode())

    @classmethod
    def of(cls, model: Model) -> Weights | None:
        if model.spec.weights is None or model.weights_dir is None:
            return None
        if not model.spec.weights.sha256:
            raise WeightsNotHashedError(model.name, model.path)
        return cls(model.weights_dir, dict(model.spec.weights.sha256))

    @classmethod
    def from_folder(cls, folder: Path) -> Weights:
        """Weights trained by kmodel: the folder's hashes.json lists every file's sha256."""
        manifest = read_manifest(folder)
        if manifest is None:
            raise NotTrainedError(folder)
        return cls(folder, manifest, in_spec=False)

    @property
    def files(self) -> list[Path]:
        return [self.folder / name for name in self.sha256]

    def verify(self, model: str, fix: str) -> None:
        for name, expected in self.sha256.items():
            path = self.folder / name
            if not path.is_file():
                problem = "is not a regular file" if path.exists() else "is missing"
                raise WeightsMissingError(model, path, problem=problem)
            found = sha256_file(path)
            if found != expected:
                raise HashMismatchError(path, expected, found, fix)


def read_manifest(folder: Path) -> dict[str, str] | None:
    """The folder's hashes.json as {file: sha256}, or None if absent or not a manifest."""
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and "/" not in k and isinstance(v, str) for k, v in data.items()):
        return None
    return data


#: the only files kmodel writes into a weights folder (besides the weights, NAME.npy)
WRITTEN = {"params.json", MANIFEST, "sources.json", "provenance.json"}


def written_by_kmodel(folder: Path, listed: dict[str, str] | None = None) -> bool:
    """True if every entry of ``folder`` is a regular file that a manifest names (the
    folder's own hashes.json, or ``listed``: a spec's weights list), of a kind kmodel
    writes (the weights' .npy and its own JSON files), with the params.json training
    writes. Replacing such a folder loses nothing kmodel did not write; a folder of the
    user's, even one with a checksum list, is never replaced."""
    names = set(listed or ()) | set(read_manifest(folder) or ())
    if not names:
        return False
    names.add(MANIFEST)
    try:
        params = json.loads((folder / "params.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(params, dict) or ("model" not in params and not listed):
        return False
    for entry in folder.iterdir():
        if entry.name not in names or not stat.S_ISREG(entry.lstat().st_mode) \
                or not (entry.name in WRITTEN or entry.name.endswith(".npy")):
            return False
    return True
