"""Weight hashes in model specs: compute, compare and (on request) write them back."""

from __future__ import annotations

from pathlib import Path

from ruamel.yaml import YAML

from kmodel._fs import atomic_path, sha256_file
from kmodel.errors import SpecError, WeightsMissingError
from kmodel.registry import Model


def weight_files(folder: Path) -> dict[str, str]:
    """sha256 of params.json and every .npy in ``folder``."""
    if not (folder / "params.json").is_file():
        raise WeightsMissingError(folder.parent.name, folder / "params.json")
    files = sorted(p for p in folder.iterdir() if p.name == "params.json" or p.suffix == ".npy")
    for p in files:
        if not p.is_file():  # a FIFO or device would block the hash
            raise WeightsMissingError(folder.parent.name, p, "replace it with the weight file",
                                      problem="is not a regular file")
        if not p.resolve().is_relative_to(folder.resolve()):
            raise WeightsMissingError(folder.parent.name, p, "copy the file in instead of "
                                      "linking it", problem=f"links to {p.resolve()}, outside "
                                      "the weights folder")
    return {p.name: sha256_file(p) for p in files}


def write_hashes(model: Model, folder: str = "weights") -> dict[str, str]:
    """Set the spec's ``weights`` to the files now in its weights folder; return the hashes.

    Comments and key order in model.yaml are kept (ruamel round trip).
    """
    rel = model.spec.weights.path if model.spec.weights else folder
    if not (model.folder / rel / "params.json").is_file():
        raise WeightsMissingError(
            model.name, model.folder / rel / "params.json",
            f"there are no weights to record: train them first (`kmodel train {model.name} "
            f"-i TRAIN.h5 -o {model.folder / rel}`; an ensembler is trained by "
            "`kmodel compose train` into a folder of its own)")
    hashes = weight_files(model.folder / rel)
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
