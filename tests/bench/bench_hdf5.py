"""Benchmark: kmodel's prediction writer against raw h5py chunked writes of the same arrays.

    python tests/bench/bench_hdf5.py [--rows 2000000] [--repeat 3]

For each layout (a scalar float32 output, a (2,) float64 output, a (256,) float32 embedding)
and batch size, both sides write the same batches of predictions and ids into a new file:
kmodel through ``kmodel.io.hdf5.PredictionWriter`` (what the runner uses: its chunk policy,
checkpoints every 0.5 s, provenance attributes), the reference with ``create_dataset(chunks=
(batch, *shape))`` and slice assignment. Prints MB/s of each, best of --repeat, and the
ratio (target: kmodel at least 0.8x). Files go to a temporary folder and are deleted.
Not collected by pytest: timings vary with the machine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from kmodel.io import hdf5

LAYOUTS = {"scalar float32": ("float32", ()), "(2,) float64": ("float64", (2,)),
           "(256,) float32": ("float32", (256,))}


def raw(path: Path, ids: np.ndarray, preds: np.ndarray, batch: int) -> None:
    n = len(ids)
    with h5py.File(path, "w") as f:
        p = f.create_dataset("preds/y", shape=preds.shape, dtype=preds.dtype,
                             chunks=(min(batch, n), *preds.shape[1:]))
        i = f.create_dataset("metadata/id", shape=(n,), dtype=ids.dtype, chunks=(min(batch, n),))
        for lo in range(0, n, batch):
            p[lo:lo + batch] = preds[lo:lo + batch]
            i[lo:lo + batch] = ids[lo:lo + batch]


def kmodel_writer(path: Path, ids: np.ndarray, preds: np.ndarray, batch: int) -> None:
    n = len(ids)
    w = hdf5.PredictionWriter(path, {"y": (str(preds.dtype), preds.shape[1:])}, n, ids.dtype,
                              batch, {"model": "bench", "kmodel_version": "bench"})
    for lo in range(0, n, batch):
        w.write(lo, ids[lo:lo + batch], {"y": preds[lo:lo + batch]})
    w.close(complete=True)


def best(fn: object, folder: Path, repeat: int, *args: object) -> float:
    times = []
    for k in range(repeat):
        path = folder / f"out-{k}.h5"
        t0 = time.perf_counter()
        fn(path, *args)  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
        path.unlink()
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"{os.cpu_count()} cores, h5py {h5py.__version__}, HDF5 {h5py.version.hdf5_version}, "
          f"{args.rows:,} rows")
    rng = np.random.default_rng(0)
    ids = hdf5.as_ids([f"row{i}" for i in range(args.rows)])
    worst = float("inf")
    with tempfile.TemporaryDirectory(prefix="kmodel-bench-hdf5-") as tmp:
        folder = Path(tmp)
        for label, (dtype, shape) in LAYOUTS.items():
            rows = args.rows if not shape or shape[0] < 64 else args.rows // 16
            preds = rng.random((rows, *shape)).astype(dtype)
            mb = (preds.nbytes + ids[:rows].nbytes) / 1e6
            for batch in (1024, 8192, 65536):
                t_raw = best(raw, folder, args.repeat, ids[:rows], preds, batch)
                t_km = best(kmodel_writer, folder, args.repeat, ids[:rows], preds, batch)
                worst = min(worst, t_raw / t_km)
                print(f"{label:>15} x {rows:>9,} rows, batch {batch:>6,} ({mb:5.0f} MB):  "
                      f"raw h5py {mb / t_raw:6.0f} MB/s   kmodel {mb / t_km:6.0f} MB/s   "
                      f"ratio {t_raw / t_km:4.2f}x")
    print(f"worst ratio (kmodel throughput / raw h5py): {worst:.2f}x (target >= 0.80x)")


if __name__ == "__main__":
    main()
