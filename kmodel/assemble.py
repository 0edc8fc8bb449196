"""A model's input file assembled from the data and from other models' predictions: what a
model fed by other models reads (a composition's ``inputs:``, as in Kipoi's composing-models
examples: a model whose input is another model's prediction, with raw features beside it).

Each input is one source (a dataset of a file) or several put side by side as columns;
rows are aligned by id to the ``ids`` file's order; its targets are copied beside them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from kmodel import checksums, provenance
from kmodel._fs import atomic_path, check_input_file, guard_output
from kmodel.compose import align
from kmodel.errors import InputSchemaError
from kmodel.io import hdf5

Source = tuple[Path, str]  # a file and one of its datasets (inputs/x, preds/proba)


def _read(path: Path, dataset: str, ids: np.ndarray) -> np.ndarray:
    """A dataset of ``path`` with its rows in the order of ``ids``."""
    check_input_file(path)
    group, _, name = dataset.strip("/").partition("/")
    try:
        arrays, own = hdf5.read_group(path, group, [name])
    except (OSError, hdf5.LayoutError) as e:
        raise InputSchemaError(f"{path}: {e}; give FILE:/GROUP/DATASET of a kmodel file"
                               ) from None
    checksums.check(path)
    own = hdf5.as_ids(own)
    rows = np.arange(len(own)) if np.array_equal(own, ids) else align(ids, own, path)
    return arrays[name][rows]


def assemble(output: Path, ids_from: Path, inputs: Mapping[str, Sequence[Source]], *,
             targets_from: Path | None = None) -> Path:
    """Write ``output``: each input's sources side by side (one source keeps its shape),
    rows in ``ids_from``'s order, with the targets of ``targets_from``."""
    every = [p for sources in inputs.values() for p, _ in sources]
    files = sorted({*every, ids_from, *([targets_from] if targets_from else [])})
    guard_output(output, files, replaceable=hdf5.is_example_data)
    check_input_file(ids_from)
    ids = hdf5.read_ids(ids_from)
    arrays = {}
    for name, sources in inputs.items():
        parts = [_read(p, d, ids) for p, d in sources]
        arrays[name] = parts[0] if len(parts) == 1 else np.concatenate(
            [a.reshape(len(ids), -1).astype(np.float32) for a in parts], axis=1)
    groups = {"inputs": arrays}
    if targets_from is not None:
        found, own = hdf5.read_group(targets_from, "targets")
        own = hdf5.as_ids(own)
        rows = np.arange(len(own)) if np.array_equal(own, ids) else align(ids, own,
                                                                           targets_from)
        groups["targets"] = {k: v[rows] for k, v in found.items()}
    upstream = json.dumps(provenance.upstream(files, output.parent), sort_keys=True)
    with atomic_path(output) as tmp:
        hdf5.write_table(tmp, groups, ids, attrs={"dataset": "assembled",
                                                  "upstream_sha256": upstream})
    return output


__all__ = ["Source", "assemble"]
