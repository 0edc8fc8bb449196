"""Benchmark: what value checksums cost, on a prediction file of --rows rows.

    python tests/bench/bench_checksums.py [--rows 10000000] [--repeat 3]

Writes the same predictions (a float32 output and a (2,) float64 one, plus 10-byte ids)
through ``PredictionWriter`` (the runner's writer: it hashes every batch as it writes)
with hashing on, and with it switched off (``Digests.update`` a no-op), best of --repeat;
then times what a reader pays: the first check of the finished file (every dataset read
and hashed, what the first ``kmodel status`` after a run does) and a later one (the
file's identity is remembered in KMODEL_HOME: nothing is read). Prints each and the
ratios. Files go to a temporary folder and are deleted. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from kmodel import checksums
from kmodel.io import hdf5

BATCH = 65536


def write(path: Path, ids: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    start = time.perf_counter()
    w = hdf5.PredictionWriter(path, {"a": ("float32", ()), "b": ("float64", (2,))}, len(ids),
                              ids.dtype, BATCH)
    for lo in range(0, len(ids), BATCH):
        hi = lo + BATCH
        w.write(lo, ids[lo:hi], {"a": a[lo:hi], "b": b[lo:hi]})
    w.close(complete=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    ids = np.char.encode(np.char.add("id", np.arange(args.rows).astype("U8")), "ascii")
    a = rng.random(args.rows, dtype=np.float32)
    b = rng.random((args.rows, 2))
    size = ids.nbytes + a.nbytes + b.nbytes
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["KMODEL_HOME"] = str(Path(tmp) / "home")
        hashed, plain = [], []
        update = hdf5.Digests.update
        for k in range(args.repeat):
            for on, times in ((True, hashed), (False, plain)):
                path = Path(tmp) / f"p-{on}-{k}.h5"
                hdf5.Digests.update = update if on else (lambda *_: None)  # type: ignore
                times.append(write(path, ids, a, b))
                if not on:
                    path.unlink()
        hdf5.Digests.update = update  # type: ignore[method-assign]
        first, later = [], []
        for k in range(args.repeat):
            path = Path(tmp) / f"p-True-{k}.h5"
            start = time.perf_counter()
            assert checksums.problems(path) == []
            first.append(time.perf_counter() - start)
            start = time.perf_counter()
            assert checksums.problems(path) == []
            later.append(time.perf_counter() - start)
    mb = size / 1e6
    print(f"{args.rows:,} rows, {mb:.0f} MB of values and ids, {os.cpu_count()} cores")
    print(f"write with checksums     {min(hashed):7.3f} s  ({mb / min(hashed):6.0f} MB/s)")
    print(f"write without checksums  {min(plain):7.3f} s  ({mb / min(plain):6.0f} MB/s)")
    print(f"  ratio with/without     {min(hashed) / min(plain):7.3f}x")
    print(f"first check (read+hash)  {min(first):7.3f} s  ({mb / min(first):6.0f} MB/s)")
    print(f"later check (cached)     {min(later) * 1e3:7.3f} ms")


if __name__ == "__main__":
    main()
