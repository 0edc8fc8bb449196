"""The composer at scale: `kmodel compose predict` (and train) on many rows x many models,
against a raw h5py read of the same prediction data. Prints wall time, throughput (MB/s of
prediction data read), the peak RSS of the largest process (host or runner), and ratios.

    python tests/bench/bench_compose.py [--rows 10000000] [--models 20] [--train-rows 2000000]

Targets: compose predict at least 200 MB/s with every process at most 300 MB; compose train
at most the training matrix (rows x models float32) plus 10% in kmodel's own memory. That
is measured with an ensembler whose fit keeps nothing (`keep`): its peak RSS at --train-rows
less its peak at 1,000 rows (the processes' imports); the real stacker's fit needs more
(it turns the matrix into logits block by block). Not collected by pytest. Files are
generated in a temporary folder (about 3 GB at 10M rows x 20 models).
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

import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[2]
# the reference: the same ensembler on the same files, in the same env, without kmodel
BARE = """\
import sys, h5py, numpy as np
sys.path.insert(0, sys.argv[1])
import model
w = {n: np.load(f"{sys.argv[2]}/{n}.npy") for n in ("stacker-coef-0", "stacker-intercept-0")}
m = model.build(); m.set_weights(w)
files = [h5py.File(p, "r", rdcc_nbytes=0) for p in sys.argv[4:]]
cols = [f["preds/proba"] for f in files]
n, bs = len(cols[0]), 1 << 16
with h5py.File(sys.argv[3], "w") as out:
    y = out.create_dataset("preds/proba", shape=(n,), dtype="float32", chunks=(bs,))
    ids = out.create_dataset("metadata/id", shape=(n,), dtype=files[0]["metadata/id"].dtype,
                             chunks=(bs,))
    for lo in range(0, n, bs):
        x = np.column_stack([c[lo:lo + bs] for c in cols])
        y[lo:lo + len(x)] = m.predict(x)
        ids[lo:lo + len(x)] = files[0]["metadata/id"][lo:lo + bs]
"""
# an ensembler that keeps nothing: compose train's peak is then kmodel's own memory
KEEP_SPEC = """\
name: keep
version: 1.0.0
env: numpy2
entrypoint: model.py:build
train:
  args: {}
inputs:
  - {name: x, dtype: float32, shape: [null]}
outputs:
  - {name: proba, dtype: float32, shape: []}
"""
KEEP = """\
import numpy as np


class Keep:
    def fit(self, x, y):
        self.shape = np.array(x.shape)

    def get_weights(self):
        return {"keep-shape-0": self.shape}

    def set_weights(self, w):
        self.shape = w["keep-shape-0"]


def build():
    return Keep()
"""
MEASURE = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
           "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
           "file=sys.stderr)")


def make(folder: Path, rows: int, models: int, seed: int = 0, shuffled: bool = False
         ) -> list[Path]:
    """Prediction files of ``models`` models; with ``shuffled``, every other file holds its
    rows in an order of its own (another tool's, a dataloader's), as Kipoi's files may."""
    rng = np.random.default_rng(seed)
    ids = np.char.encode(np.char.add("r", np.arange(rows).astype("U9")), "ascii")
    y = rng.integers(0, 2, rows)
    with h5py.File(folder / "targets.h5", "w") as f:
        f["targets/y"] = y
        f["metadata/id"] = ids
    paths = []
    for k in range(models):
        path = folder / f"p{k:02d}.h5"
        with h5py.File(path, "w") as f:
            p = np.clip(0.5 * y + rng.uniform(0, 0.5, rows), 0.01, 0.99).astype(np.float32)
            order = rng.permutation(rows) if shuffled and k % 2 else np.arange(rows)
            f.create_dataset("preds/proba", data=p[order], chunks=(min(rows, 1 << 16),))
            f.create_dataset("metadata/id", data=ids[order], chunks=(min(rows, 1 << 16),))
            if not (shuffled and k % 2):  # a kmodel file of the same input: its record
                f.attrs.update(model=f"m{k:02d}", input_sha256="0" * 64, rows_start=0,
                               rows_stop=rows, kmodel_complete=True)
        paths.append(path)
    return paths


def measured(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """Wall seconds and the peak RSS (MB) of the largest process the command ran."""
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", MEASURE, *cmd], cwd=cwd, capture_output=True,
                         text=True)
    wall = time.perf_counter() - t0
    code, peak = res.stderr.strip().splitlines()[-1].split()
    if code != "0":
        sys.exit(f"failed: {' '.join(cmd)}\n{res.stderr[-3000:]}")
    return wall, int(peak) / 1024


def raw_read(paths: list[Path]) -> float:
    """Seconds to read every /preds dataset whole with h5py (the reference)."""
    t0 = time.perf_counter()
    for p in paths:
        with h5py.File(p, "r") as f:
            f["preds/proba"][()]
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--models", type=int, default=20)
    ap.add_argument("--train-rows", type=int, default=2_000_000)
    args = ap.parse_args()
    kmodel = [sys.executable, "-m", "kmodel"]
    with tempfile.TemporaryDirectory(prefix="kmodel-compose-bench-") as tmp:
        root = Path(tmp)
        shutil.copytree(REPO / "envs", root / "envs")
        shutil.copytree(REPO / "model_specs", root / "model_specs")
        (root / "model_specs" / "keep").mkdir()
        (root / "model_specs" / "keep" / "model.yaml").write_text(KEEP_SPEC)
        (root / "model_specs" / "keep" / "model.py").write_text(KEEP)
        for split in ("train", "apply", "small", "shuffled", "train-shuffled"):
            (root / split).mkdir()
        train = make(root / "train", args.train_rows, args.models, seed=1)
        small = make(root / "small", 1000, args.models, seed=1)
        preds = make(root / "apply", args.rows, args.models, seed=2)
        mixed = make(root / "shuffled", args.rows, args.models, seed=2, shuffled=True)
        mixed_train = make(root / "train-shuffled", args.train_rows, args.models, seed=1,
                           shuffled=True)
        subprocess.run([*kmodel, "env", "create", "stacker"], cwd=root, check=True,
                       capture_output=True)
        t_train, rss_train = measured([*kmodel, "compose", "train", "stacker",
                                       *map(str, train), "--targets",
                                       str(root / "train" / "targets.h5"), "-o", "W"], root)
        own = []
        for files, split in ((train, "train"), (small, "small")):
            own.append(measured([*kmodel, "compose", "train", "keep", *map(str, files),
                                 "--targets", str(root / split / "targets.h5"), "-o",
                                 f"K-{split}"], root)[1])
        t_apply, rss_apply = measured([*kmodel, "compose", "predict", "stacker",
                                       *map(str, preds), "--weights", "W", "-o", "ens.h5"],
                                      root)
        t_mixed, rss_mixed = measured([*kmodel, "compose", "predict", "stacker",
                                       *map(str, mixed), "--weights", "W", "-o", "mixed.h5",
                                       "--allow-mixed-inputs"], root)
        t_mixed_train, rss_mixed_train = measured(
            [*kmodel, "compose", "train", "stacker", *map(str, mixed_train), "--targets",
             str(root / "train-shuffled" / "targets.h5"), "-o", "W2",
             "--allow-mixed-inputs"], root)
        python = subprocess.run([*kmodel, "env", "path", "stacker"], cwd=root, check=True,
                                capture_output=True, text=True).stdout.strip()
        t_bare, rss_bare = measured([f"{python}/bin/python", "-c", BARE,
                                     str(root / "model_specs" / "stacker"), str(root / "W"),
                                     str(root / "bare.h5"), *map(str, preds)], root)
        os.sync()
        t_raw = min(raw_read(preds) for _ in range(2))
    data_mb = args.rows * args.models * 4 / 1e6
    matrix_mb = args.train_rows * args.models * 4 / 1e6
    print(f"composer, {args.models} models, {os.cpu_count()} cores "
          "(files in the page cache, as right after predicting them):")
    print(f"  compose predict, {args.rows:,} rows: {t_apply:6.1f} s, {data_mb / t_apply:6.0f} "
          f"MB/s of predictions; peak RSS {rss_apply:.0f} MB (target <= 300)")
    print(f"  compose predict, half the files in orders of their own: {t_mixed:6.1f} s, "
          f"{data_mb / t_mixed:6.0f} MB/s; peak RSS {rss_mixed:.0f} MB (target >= 200 MB/s, "
          f"<= 300 MB); shuffled / in order: {t_mixed / t_apply:.2f}x")
    print(f"  compose train, {args.train_rows:,} rows, half shuffled: {t_mixed_train:6.1f} s "
          f"(in order {t_train:.1f} s: {t_mixed_train / t_train:.2f}x); peak RSS "
          f"{rss_mixed_train:.0f} MB")
    print(f"  bare loop, same ensembler and files: {t_bare:6.1f} s, {data_mb / t_bare:6.0f} "
          f"MB/s; peak RSS {rss_bare:.0f} MB; kmodel / bare: {t_apply / t_bare:.2f}x")
    print(f"  raw h5py read of the predictions alone: {data_mb / t_raw:6.0f} MB/s")
    print(f"  compose train, {args.train_rows:,} rows: {t_train:6.1f} s; peak RSS "
          f"{rss_train:.0f} MB for a {matrix_mb:.0f} MB training matrix "
          f"({rss_train / matrix_mb:.2f}x; the stacker's fit turns it into logits)")
    print(f"  compose train's own memory (ensembler `keep`): {own[0]:.0f} MB peak at "
          f"{args.train_rows:,} rows less {own[1]:.0f} MB at 1,000 rows = {own[0] - own[1]:.0f}"
          f" MB for a {matrix_mb:.0f} MB matrix: {(own[0] - own[1]) / matrix_mb:.2f}x "
          "(target <= 1.10x)")


if __name__ == "__main__":
    main()
