"""Benchmark: what the reload check costs a `kmodel train`.

    python tests/bench/bench_reload.py [--rows 100000] [--repeat 3]

Trains a linear numpy model (the repo's numpy2 env, weights as .npy) on --rows rows of 30
features in a temporary project, --repeat times, and times the whole of ``train.train``
and the part spent in ``train.reload_check`` (a fresh runner, started when the fit
started, loads the weights and predicts up to 256 training rows; the host compares).
Prints the best times and the check's share. The env is built in KMODEL_HOME (reused).
Not collected by pytest.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from kmodel import train as train_mod
from kmodel.envs import backend_for
from kmodel.io import hdf5
from kmodel.registry import Registry

REPO = Path(__file__).resolve().parents[2]
MODEL = """\
import numpy as np


class Linear:
    def fit(self, x, y):
        self.w = np.linalg.lstsq(np.c_[x, np.ones(len(x))], y, rcond=None)[0]
        return self

    def predict(self, x):
        return (x @ self.w[:-1] + self.w[-1]).astype(np.float32)

    def get_weights(self):
        return {"lin-w-0": self.w}

    def set_weights(self, w):
        self.w = w["lin-w-0"]


def build():
    return Linear()
"""
SPEC = """\
name: lin
version: 0.1.0
env: numpy2
entrypoint: model.py:build
inputs:
  - {name: x, dtype: float32, shape: [30]}
outputs:
  - {name: y, dtype: float32, shape: []}
train:
  args: {}
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copytree(REPO / "envs", root / "envs")
        (root / "specs" / "lin").mkdir(parents=True)
        (root / "specs" / "lin" / "model.py").write_text(MODEL)
        (root / "specs" / "lin" / "model.yaml").write_text(SPEC)
        rng = np.random.default_rng(0)
        x = rng.normal(size=(args.rows, 30)).astype(np.float32)
        y = (x @ rng.normal(size=30) + 1.0).astype(np.float32)
        hdf5.write_table(root / "train.h5", {"inputs": {"x": x}, "targets": {"y": y}},
                         np.arange(args.rows))
        registry = Registry([root / "specs"], [root / "envs"])
        ref = registry.env("numpy2")
        backend_for(ref).ensure(ref)
        spent: list[float] = []
        check = train_mod.reload_check

        def timed(*a: Any, **k: Any) -> None:
            start = time.perf_counter()
            check(*a, **k)
            spent.append(time.perf_counter() - start)

        train_mod.reload_check = timed  # type: ignore[assignment]
        totals = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            train_mod.train(registry, "lin", root / "train.h5", root / "w")
            totals.append(time.perf_counter() - start)
        total, part = min(totals), min(spent)
        print(f"kmodel train, {args.rows} rows x 30: {total:.3f} s (best of {args.repeat})")
        print(f"  of which the reload check: {part:.3f} s ({part / total:.1%})")


if __name__ == "__main__":
    main()
