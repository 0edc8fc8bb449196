"""Benchmark: a shipped DL model's `kmodel predict` against a bare loop in the same env.

    python tests/bench/bench_deep_predict.py [--model torch-mlp] [--rows 1000000]
        [--batch-size 65536] [--threads N] [--device cpu|cuda] [--repeat 3]

Both sides build the model from its spec's args, load its shipped weights (the model's own
load(folder)), read a 30-feature float32 input in batches of the same size, predict and
write a chunked HDF5 dataset: the bare loop with h5py only, kmodel through its runner
(checksums, provenance, atomic rename). Both get the same threads (OMP/MKL/OpenBLAS and
torch's). Prints the best of --repeat runs, rows/s and the ratio (target <= 1.05x), at a
small size too so kmodel's fixed start-up can be told apart from its per-row cost.
Not a test: timings vary with the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]

BARE = """\
import importlib.util, json, os, sys
import h5py, numpy as np
model_dir, inp, out, bs, threads, device = sys.argv[1:7]
bs, threads, job = int(bs), int(threads), json.loads(sys.argv[7])
sys.path.insert(0, model_dir)
spec = importlib.util.spec_from_file_location("m", os.path.join(model_dir, "model.py"))
m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
args = dict(job["args"], **({"device": device} if device != "-" else {}))
model = m.build(**args)
model.load(job["weights"])
if threads and "torch" in sys.modules:
    sys.modules["torch"].set_num_threads(threads)
with h5py.File(inp, "r") as f, h5py.File(out, "w") as g:
    x, ids = f["inputs/x"], f["metadata/id"]
    n = len(ids)
    y = g.create_dataset("preds/proba", shape=(n,), dtype="float32", chunks=(min(bs, n),))
    gid = g.create_dataset("metadata/id", shape=(n,), dtype=ids.dtype, chunks=(min(bs, n),))
    for lo in range(0, n, bs):
        hi = min(lo + bs, n)
        y[lo:hi] = np.asarray(model.predict(x[lo:hi]), np.float32)
        gid[lo:hi] = ids[lo:hi]
"""


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env, cwd=REPO)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="torch-mlp")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--small", type=int, default=10_000, help="rows of the start-up run")
    ap.add_argument("--batch-size", type=int, default=65536)
    ap.add_argument("--threads", type=int, default=0, help="0: each side's default")
    ap.add_argument("--device", default=None, help="passed to build() (torch-mlp: cpu, cuda)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    from kmodel.envs import backend_for
    from kmodel.io import hdf5
    from kmodel.registry import Registry

    os.chdir(REPO)
    registry = Registry()
    model = registry.model(args.model)
    ref = registry.env(model.spec.env)
    python = backend_for(ref).ensure(ref).python
    env = dict(os.environ)
    km_opts: list[str] = []
    help_text = subprocess.run([sys.executable, "-m", "kmodel", "predict", "--help"],
                               capture_output=True, text=True).stdout
    if args.threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(args.threads)
        if "--threads" in help_text:
            km_opts += ["--threads", str(args.threads)]
    if args.device:
        if "--device" not in help_text:
            sys.exit("this kmodel's predict has no --device")
        km_opts += ["--device", args.device]
    job = json.dumps({"args": dict(model.spec.args), "weights": str(model.weights_dir)})
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="kmodel-bench-deep-") as tmp:
        root = Path(tmp)
        (root / "bare.py").write_text(BARE)
        times = {}
        for rows in (args.small, args.rows):
            x = (rng.normal(size=(rows, 30)) * 10 + 20).astype(np.float32)
            ids = np.char.encode(np.char.add("row", np.arange(rows).astype(str)))
            hdf5.write_table(root / "in.h5", {"inputs": {"x": x}}, ids,
                             chunk_rows=args.batch_size)
            del x, ids
            bare = [str(python), str(root / "bare.py"), str(model.folder), str(root / "in.h5"),
                    str(root / "bare.h5"), str(args.batch_size), str(args.threads),
                    args.device or "-", job]
            km = [sys.executable, "-m", "kmodel", "predict", args.model, "-i",
                  str(root / "in.h5"), "-o", str(root / "km.h5"), "--batch-size",
                  str(args.batch_size), *km_opts]
            first = timed(km, env)  # hashes the new input for provenance (cached afterwards)
            t_bare = t_km = float("inf")
            for _ in range(args.repeat):  # interleaved: a change of load hits both sides
                t_bare = min(t_bare, timed(bare, env))
                t_km = min(t_km, timed(km, env))
            a, _ = hdf5.read_group(root / "bare.h5", "preds")
            b, _ = hdf5.read_group(root / "km.h5", "preds")
            diff = float(np.abs(a["proba"] - b["proba"]).max())
            assert diff <= 1e-5, f"kmodel and the bare loop disagree by {diff}"
            times[rows] = (t_bare, t_km)
            print(f"{args.model} {rows:>10,} rows x 30, batch {args.batch_size:,}, threads "
                  f"{args.threads or 'default'}, device {args.device or 'default'}:  bare "
                  f"{t_bare:6.2f} s ({rows / t_bare:9,.0f} rows/s)   kmodel {t_km:6.2f} s "
                  f"({rows / t_km:9,.0f} rows/s; first run {first:.2f} s)   ratio "
                  f"{t_km / t_bare:4.2f}x", flush=True)
        (b1, k1), (b2, k2) = times.values()
        print(f"ratio at {args.rows:,} rows: {k2 / b2:.3f}x (target <= 1.05x); per-row cost "
              f"ratio (slope): {(k2 - k1) / (b2 - b1):.3f}x; kmodel's fixed start-up: "
              f"{k1 - b1:+.2f} s")


if __name__ == "__main__":
    main()
