"""`kmodel data import` of a large table: wall time and peak memory against the table's
size (streamed: memory should not grow with the table).

    python tests/bench/bench_tables.py [--rows 5000000] [--columns 20]

Writes a CSV of about 1 GB (5M rows x 20 numbers) and a Parquet copy in a temporary folder,
imports each, and prints the peak RSS of the importing process. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

MEASURE = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
           "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
           "file=sys.stderr)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--columns", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kmodel-tables-") as tmp:
        root = Path(tmp)
        rng = np.random.default_rng(0)
        writer = None
        for lo in range(0, args.rows, 500_000):
            n = min(500_000, args.rows - lo)
            cols = {"id": pa.array([f"r{i}" for i in range(lo, lo + n)]),
                    "y": pa.array(rng.integers(0, 2, n))}
            cols |= {f"f{j}": pa.array(rng.normal(size=n)) for j in range(args.columns)}
            batch = pa.table(cols)
            if writer is None:
                writer = pacsv.CSVWriter(root / "t.csv", batch.schema)
                pq_writer = pq.ParquetWriter(root / "t.parquet", batch.schema)
            writer.write_table(batch)
            pq_writer.write_table(batch)
        assert writer is not None
        writer.close()
        pq_writer.close()
        for name in ("t.csv", "t.parquet"):
            size = (root / name).stat().st_size / 1e6
            t0 = time.perf_counter()
            res = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-m", "kmodel",
                                  "data", "import", str(root / name), "-o",
                                  str(root / f"{name}.h5"), "--id", "id", "--target", "y"],
                                 capture_output=True, text=True)
            wall = time.perf_counter() - t0
            code, peak = res.stderr.strip().splitlines()[-1].split()
            assert code == "0", res.stderr
            print(f"{name}: {size:,.0f} MB, {args.rows:,} rows x {args.columns}: import "
                  f"{wall:.1f} s, peak RSS {int(peak) / 1024:.0f} MB ({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
