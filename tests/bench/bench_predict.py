"""Benchmark: `kmodel predict` against a bare loop in the same env.

    python tests/bench/bench_predict.py [--rows 1000000] [--features 30] [--batch-size 65536]

Both sides load the weights, read the input in batches, predict with the same cheap linear
model and write a chunked HDF5 dataset. Prints the best of --repeat runs for each, at N and 4N rows,
and the ratio of their per-row costs (the slope between the two sizes; target <= 1.10x)
apart from kmodel's fixed start-up cost. Not a test: timings vary with the machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]

MODEL = """\
import numpy as np


class Linear:
    def predict(self, x):
        return x @ self.w + self.b

    def set_weights(self, w):
        self.w, self.b = w["linear-w-0"], w["linear-b-0"]


def build():
    return Linear()
"""

SPEC = """\
name: linear
version: 1.0.0
env: numpy2
entrypoint: model.py:build
inputs:
  - {{name: x, dtype: float32, shape: [{features}]}}
outputs:
  - {{name: y, dtype: float32, shape: []}}
"""

BARE = """\
import sys, h5py, numpy as np
inp, out, wdir, bs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
w, b = np.load(wdir + "/linear-w-0.npy"), np.load(wdir + "/linear-b-0.npy")
with h5py.File(inp, "r") as f, h5py.File(out, "w") as g:
    x, ids = f["inputs/x"], f["metadata/id"]
    n = len(ids)
    y = g.create_dataset("preds/y", shape=(n,), dtype="float32", chunks=(min(bs, n),))
    gid = g.create_dataset("metadata/id", shape=(n,), dtype=ids.dtype, chunks=(min(bs, n),))
    for lo in range(0, n, bs):
        hi = min(lo + bs, n)
        y[lo:hi] = (x[lo:hi] @ w + b).astype("float32")
        gid[lo:hi] = ids[lo:hi]
"""


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=65536)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    from kmodel.envs import backend_for
    from kmodel.io import hdf5
    from kmodel.registry import Registry
    from kmodel.weights import write_hashes

    with tempfile.TemporaryDirectory(prefix="kmodel-bench-") as tmp:
        root = Path(tmp)
        shutil.copytree(REPO / "envs", root / "envs")
        model = root / "model_specs" / "linear"
        (model / "weights").mkdir(parents=True)
        (model / "model.py").write_text(MODEL)
        (model / "model.yaml").write_text(SPEC.format(features=args.features))
        rng = np.random.default_rng(0)
        np.save(model / "weights" / "linear-w-0.npy", rng.normal(size=args.features))
        np.save(model / "weights" / "linear-b-0.npy", np.array(0.5))
        (model / "weights" / "params.json").write_text("{}\n")
        os.chdir(root)
        registry = Registry()
        write_hashes(registry.model("linear"))
        ref = registry.env("numpy2")
        python = backend_for(ref).ensure(ref).python
        (root / "bare.py").write_text(BARE)
        times = {}
        for rows in (args.rows, args.rows * 4):
            x = rng.normal(size=(rows, args.features)).astype(np.float32)
            ids = np.char.encode(np.char.add("row", np.arange(rows).astype(str)))
            hdf5.write_table(root / "in.h5", {"inputs": {"x": x}}, ids,
                             chunk_rows=args.batch_size)
            del x, ids
            bare = [str(python), "bare.py", "in.h5", "bare.h5", str(model / "weights"),
                    str(args.batch_size)]
            km = [sys.executable, "-m", "kmodel", "predict", "linear", "-i", "in.h5", "-o",
                  "km.h5", "--batch-size", str(args.batch_size)]
            size = (root / "in.h5").stat().st_size / 1e6
            t_bare = min(timed(bare) for _ in range(args.repeat))
            cold = timed(km)  # hashes the new input for provenance (cached afterwards)
            t_km = min(timed(km) for _ in range(args.repeat))
            a, _ = hdf5.read_group(root / "bare.h5", "preds")
            b, _ = hdf5.read_group(root / "km.h5", "preds")
            assert np.array_equal(a["y"], b["y"]), "kmodel and the bare loop disagree"
            times[rows] = (t_bare, t_km)
            print(f"{rows:>10,} rows x {args.features} float32 ({size:4.0f} MB), batch "
                  f"{args.batch_size:,}:  bare loop {t_bare:5.2f} s   kmodel predict "
                  f"{t_km:5.2f} s (first run {cold:5.2f} s)   ratio {t_km / t_bare:4.2f}x")
        (b1, k1), (b4, k4) = times.values()
        print(f"per-row cost ratio (slope between the two sizes): {(k4 - k1) / (b4 - b1):.2f}x "
              "(target <= 1.10x)")
        print(f"fixed start-up overhead of kmodel: {k1 - b1 * (k4 - k1) / (b4 - b1):.2f} s")


if __name__ == "__main__":
    main()
