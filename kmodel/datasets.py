"""Example data: scikit-learn's bundled breast_cancer table, split and written as kmodel inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kmodel._fs import atomic_path, guard_output
from kmodel.errors import ToolMissingError, UsageError
from kmodel.io import hdf5


def breast_cancer(train: Path, test: Path, *, seed: int = 0, test_fraction: float = 0.3,
                  blend: Path | None = None) -> None:
    """Write a stratified train/test split of breast_cancer (569 x 30, y: 1 = benign); with
    ``blend``, the test rows are halved (stratified): the first half becomes a blend split
    for `stacking: holdout` (rows a model trained on the train split never saw)."""
    if not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:  # NaN too
        raise UsageError(f"test_fraction {test_fraction!r} is not between 0 and 1; e.g. 0.3")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise UsageError(f"seed {seed!r} is not a whole number from 0 to 2**32-1")
    try:
        from sklearn.datasets import load_breast_cancer
    except ImportError:
        raise ToolMissingError("the breast_cancer example needs scikit-learn on the host; "
                               "pip install 'kmodel-ensembles[demo]'") from None
    guard_output(train, replaceable=hdf5.is_example_data)
    guard_output(test, [train], replaceable=hdf5.is_example_data)
    if blend is not None:
        guard_output(blend, [train, test], replaceable=hdf5.is_example_data)
    x, y = load_breast_cancer(return_X_y=True)
    ids = np.array([f"bc-{i:04d}" for i in range(len(y))])
    rng = np.random.default_rng(seed)
    test_rows = np.concatenate([
        rng.permutation(np.flatnonzero(y == c))[: round(test_fraction * np.sum(y == c))]
        for c in np.unique(y)])
    is_test = np.zeros(len(y), bool)
    is_test[test_rows] = True
    is_blend = np.zeros(len(y), bool)
    if blend is not None:  # the first half of each class's test rows, in their drawn order
        for c in np.unique(y):
            drawn = [r for r in test_rows if y[r] == c]
            is_blend[drawn[: len(drawn) // 2]] = True
    splits = [(train, ~is_test), (test, is_test & ~is_blend)]
    for path, rows in [*splits, *([(blend, is_blend)] if blend is not None else [])]:
        with atomic_path(path) as tmp:
            hdf5.write_table(tmp, {"inputs": {"x": x[rows].astype(np.float32)},
                                   "targets": {"y": y[rows].astype(np.int64)}},
                             ids[rows], attrs={"dataset": "sklearn breast_cancer",
                                               "builtin": "breast_cancer", "seed": seed,
                                               "test_fraction": test_fraction})
