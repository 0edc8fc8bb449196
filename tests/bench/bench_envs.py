"""Benchmark: build time and size of each framework env, cold (empty uv cache) and warm.

    python tests/bench/bench_envs.py [ENV ...]     (default: torch-cpu keras-jax lightgbm)

For each env: `kmodel env create ENV` into a fresh KMODEL_HOME with a fresh, empty uv
cache (cold: every wheel fetched from the configured package sources and unpacked), then
again into another fresh KMODEL_HOME with that cache (warm: what a second machine sharing
the cache, or a rebuilt env, costs). Prints seconds, the env's size on disk (files counted
once per inode) and the cache's. Not a test: timings vary with the machine and its load.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT = ["torch-cpu", "keras-jax", "lightgbm"]


def size_mb(folder: Path) -> float:
    """Bytes under folder, each inode once (uv hard-links files from its cache)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            st = os.lstat(os.path.join(root, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total / 1e6


def build(env: str, home: Path, cache: Path) -> tuple[float, Path]:
    run_env = {**os.environ, "KMODEL_HOME": str(home), "UV_CACHE_DIR": str(cache)}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kmodel", "env", "create", env], cwd=REPO,
                   env=run_env, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    path = subprocess.run([sys.executable, "-m", "kmodel", "env", "path", env], cwd=REPO,
                          env=run_env, check=True, capture_output=True, text=True)
    return seconds, Path(path.stdout.strip())


def main(envs: list[str]) -> None:
    print(f"{'env':<12} {'cold s':>7} {'warm s':>7} {'env MB':>7} {'cache MB':>9}")
    for env in envs:
        with tempfile.TemporaryDirectory(prefix="kmodel-bench-env-") as tmp:
            t = Path(tmp)
            cold, path = build(env, t / "home-cold", t / "uv-cache")
            warm, _ = build(env, t / "home-warm", t / "uv-cache")
            print(f"{env:<12} {cold:7.1f} {warm:7.1f} {size_mb(path):7.0f} "
                  f"{size_mb(t / 'uv-cache'):9.0f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or DEFAULT)
