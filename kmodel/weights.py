"""Weights: params.json plus weight files (one .npy per named weight, or native files of
the formats kmodel/weight_formats.py names), each file with its sha256.

The one home of everything about weight files: which files a folder holds, their hashes,
the one check of files against hashes (used by predict, status, verify, `kmodel hash` and
bundles), the manifest of a trained folder, and writing hashes back into a spec.

A model's shipped weights are listed, with the sha256 of each file, in its spec; weights
trained by kmodel carry the same list in the folder itself (``hashes.json``, a
``weights-manifest`` document). The manifest is also how kmodel knows a folder is its own:
it replaces a weights folder only when every file in it is one the manifest names.
"""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kmodel import formats, weight_formats
from kmodel._fs import atomic_path, sha256_bytes, sha256_file
from kmodel.errors import (
    HashMismatchError,
    KmodelError,
    NotTrainedError,
    SpecError,
    ValuesChangedError,
    WeightsChangedError,
    WeightsMissingError,
    WeightsNotHashedError,
)
from kmodel.registry import Model

#: a trained weights folder's list of its files and their sha256
WEIGHTS_MANIFEST = "hashes.json"
#: the model, its args and train args and its weight names, beside the weights
PARAMS = "params.json"
#: what the folder's weights were trained from (kmodel/provenance.py writes it)
RECORD = "provenance.json"
#: the only files kmodel writes into a weights folder (besides the weights)
WRITTEN = set(weight_formats.KMODEL_FILES)
assert WRITTEN == {PARAMS, WEIGHTS_MANIFEST, RECORD}


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
        return (f"restore the file, or make {self.folder} again ({WEIGHTS_MANIFEST} there "
                "lists it)")

    @property
    def digest(self) -> str:
        """One sha256 for the whole list: what predictions record as their weights."""
        return sha256_bytes(json.dumps(self.sha256, sort_keys=True).encode())

    @classmethod
    def of(cls, model: Model) -> Weights | None:
        """The model's own weights, as its spec lists them (None: it has none)."""
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

    def problems(self) -> list[tuple[str, str]]:
        """(file, what is wrong) for every listed file that is missing, not a regular file,
        or differs from its hash; empty when all match. The one check of weight files."""
        found = []
        for name, expected in self.sha256.items():
            path = self.folder / name
            if not path.is_file():
                found.append((name, "is not a regular file" if path.exists() else "is missing"))
            elif sha256_file(path) != expected:
                found.append((name, "changed"))
        return found

    def verify(self, model: str, fix: str | None = None) -> None:
        """Raise for the first file that does not match (KM300, KM301)."""
        for name, problem in self.problems():
            path = self.folder / name
            if problem != "changed":
                raise WeightsMissingError(model, path, problem=problem)
            raise HashMismatchError(path, self.sha256[name], sha256_file(path),
                                    fix or self.fix(model))


# --- trained folders: manifest, params, who wrote it ------------------------------------


def read_manifest(folder: Path, *, verify: bool = True) -> dict[str, str] | None:
    """The folder's hashes.json as {file: sha256}, or None if absent or not a manifest.
    Version 0 (an older kmodel's) is the bare mapping; version 1 holds it under files.
    One edited after kmodel wrote it is ValuesChangedError (unless not ``verify``)."""
    try:
        version, body = formats.read(folder / WEIGHTS_MANIFEST, "weights-manifest",
                                     verify=verify)
    except ValuesChangedError:
        raise
    except (OSError, KmodelError):
        return None
    files = body if version == 0 else body.get("files")
    if not isinstance(files, dict) or not all(
            isinstance(k, str) and "/" not in k and isinstance(v, str) for k, v in files.items()):
        return None
    return files


def seal(folder: Path, write: bool = True) -> Weights:
    """The sha256 of every file of a folder kmodel just filled; with ``write``, also its
    manifest (hashes.json) in it."""
    hashes = {p.name: sha256_file(p) for p in sorted(folder.iterdir())}
    if write:
        (folder / WEIGHTS_MANIFEST).write_text(
            formats.dumps("weights-manifest", {"files": hashes}))
    return Weights(folder, hashes, in_spec=False)


def params_text(model: str, args: dict[str, Any], train_args: dict[str, Any],
                names: list[str]) -> str:
    """params.json of weights kmodel trained; ``names``: the weights in the order the
    folder holds them (a list's in its order), as weight_formats.names_in gives them."""
    return formats.dumps("params", {"model": model, "args": args, "train_args": train_args,
                                    "weights": list(names)})


def written_by_kmodel(folder: Path, listed: dict[str, str] | None = None) -> bool:
    """True if every entry of ``folder`` is a regular file that a manifest names (the
    folder's own hashes.json, or ``listed``: a spec's weights list), of a kind kmodel
    writes (weight files of the formats kmodel takes, and its own JSON files), with the
    params.json training writes. Replacing such a folder loses nothing kmodel did not
    write; a folder of the user's, even one with a checksum list, is never replaced."""
    names = set(listed or ()) | set(read_manifest(folder, verify=False) or ())
    if not names:
        return False
    names.add(WEIGHTS_MANIFEST)
    try:  # (kmodel's own files, even edited: remaking them is what is wanted)
        _, params = formats.read(folder / PARAMS, "params", verify=False)
    except (OSError, KmodelError):
        return False
    if "model" not in params and not listed:
        return False
    legacy = "sources.json"  # an older kmodel's list of an ensembler's inputs
    for entry in folder.iterdir():
        if entry.name not in names or not stat.S_ISREG(entry.lstat().st_mode) \
                or not (entry.name in WRITTEN | {legacy}
                        or weight_formats.format_of(entry.name) is not None):
            return False
    return True


# --- a model's own weights and its spec ---------------------------------------------


def scan(model: str, folder: Path) -> dict[str, str]:
    """sha256 of every file in ``folder`` but a hashes.json: params.json, provenance.json
    (what the weights were trained on) and the weight files (.npy and the native formats
    of kmodel/weight_formats.py): what `kmodel hash` records. A pickle, or a file of no
    format kmodel takes, is refused (KM305)."""
    if not (folder / PARAMS).is_file():
        raise WeightsMissingError(model, folder / PARAMS)
    files = sorted(p for p in folder.iterdir() if p.name != WEIGHTS_MANIFEST)
    for p in files:
        if not p.resolve().is_relative_to(folder.resolve()):
            raise WeightsMissingError(model, p, "copy the file in instead of linking it",
                                      problem=f"links to {p.resolve()}, outside the weights "
                                      "folder")
        if not p.is_file():  # a FIFO or device would block the hash
            raise WeightsMissingError(model, p, "replace it with the weight file (a weights "
                                      "folder holds files only)",
                                      problem="is not a regular file")
        weight_formats.check_file(p, model)
    return {p.name: sha256_file(p) for p in files}


def compare(model: Model) -> list[tuple[str, str]]:
    """(state, file) for the model's weight files against its spec's hashes: ok, CHANGED,
    missing (listed, not there) or unlisted (there, not listed). Empty: no weights."""
    if not model.spec.weights or model.weights_dir is None:
        return []
    found = scan(model.name, model.weights_dir)
    listed = model.spec.weights.sha256
    rows = []
    for name in sorted(set(found) | set(listed)):
        want, got = listed.get(name), found.get(name)
        rows.append(("ok" if want == got else "missing" if got is None else
                     "unlisted" if want is None else "CHANGED", name))
    return rows


def check_compare(model: Model, rows: list[tuple[str, str]]) -> None:
    """KM302 when ``compare`` found any file that differs from the spec."""
    if bad := sum(state != "ok" for state, _ in rows):
        raise WeightsChangedError(model.name, model.path, bad)


def write_hashes(model: Model, folder: str = "weights") -> dict[str, str]:
    """Set the spec's ``weights`` to the files now in its weights folder; return the hashes.

    Comments and key order in model.yaml are kept (ruamel round trip).
    """
    from ruamel.yaml import YAML

    rel = model.spec.weights.path if model.spec.weights else folder
    if not (model.folder / rel / PARAMS).is_file():
        raise WeightsMissingError(
            model.name, model.folder / rel / PARAMS,
            f"there are no weights to record: train them first (`kmodel train {model.name} "
            f"-i TRAIN.h5 -o {model.folder / rel}`; an ensembler is trained by "
            "`kmodel compose train` into a folder of its own)")
    hashes = scan(model.name, model.folder / rel)
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    doc = yaml.load(model.path)
    if not isinstance(doc, dict):
        raise SpecError(model.path, "expected a mapping at the top level")
    doc["weights"] = {"path": rel, "sha256": hashes}
    with atomic_path(model.path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        yaml.dump(doc, f)
    return hashes


__all__ = ["PARAMS", "RECORD", "WEIGHTS_MANIFEST", "Weights", "check_compare", "compare",
           "params_text", "read_manifest", "scan", "seal", "write_hashes",
           "written_by_kmodel"]
