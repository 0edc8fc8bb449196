"""Benchmark: kmodel's start-up, whole processes, against a bare Python start.

    python tests/bench/bench_start.py [--repeat 7]

Times (median of --repeat) `python -c pass` (the floor every command pays), `kmodel --help`,
`kmodel ls`, a no-op `kmodel env create` (the env already built) and the host start-up of
`kmodel predict`: how long after the process started it launches the model's runner
(measured by running the CLI under a wrapper that stamps the moment subprocess.Popen is
called). Targets (issue 10): --help and ls at most 150 ms, no-op env create at most 150 ms,
host start-up at most 100 ms. Uses the repo's model_specs/ and envs/ and $KMODEL_HOME.
Not collected by pytest: timings vary with the machine; run it twice so the first run's
bytecode compilation is not counted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Runs kmodel's CLI in this process and prints how many ms after the interpreter started
# the first non-trivial child (the runner) is spawned.
WRAPPER = """\
import runpy, subprocess, sys, time
t0 = float(sys.argv[1])
init = subprocess.Popen.__init__
def stamped(self, args, *a, **k):
    if "runner.py" in " ".join(map(str, args)):
        print(f"RUNNER-SPAWN {(time.time() - t0) * 1000:.1f}", file=sys.stderr, flush=True)
    init(self, args, *a, **k)
subprocess.Popen.__init__ = stamped
sys.argv = ["kmodel", *sys.argv[2:]]
runpy.run_module("kmodel", run_name="__main__")
"""


def wall(cmd: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=REPO)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def host_startup(args: list[str], repeat: int, folder: Path) -> float:
    times = []
    for k in range(repeat):
        out = folder / f"p{k}.h5"
        proc = subprocess.run([sys.executable, "-c", WRAPPER, repr(time.time()), *args,
                               "-o", str(out)], check=True, cwd=REPO, text=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        line = next(x for x in proc.stderr.splitlines() if x.startswith("RUNNER-SPAWN"))
        times.append(float(line.split()[1]))
        out.unlink()
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    km = [sys.executable, "-m", "kmodel"]
    subprocess.run([*km, "env", "create", "numpy2"], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL)
    print(f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, median of {args.repeat}")
    floor = wall([sys.executable, "-c", "pass"], args.repeat)
    print(f"{'python -c pass':>28}: {floor:6.0f} ms   (the floor)")
    for label, cmd, target in (("kmodel --help", ["--help"], 150), ("kmodel ls", ["ls"], 150),
                               ("no-op kmodel env create", ["env", "create", "numpy2"], 150)):
        ms = wall([*km, *cmd], args.repeat)
        print(f"{label:>28}: {ms:6.0f} ms   target {target} ms: {ms / target:4.2f}x the target, "
              f"{ms / floor:4.1f}x the floor")
    with tempfile.TemporaryDirectory(prefix="kmodel-bench-start-") as tmp:
        folder = Path(tmp)
        subprocess.run([*km, "data", "breast_cancer", "--train", str(folder / "train.h5"),
                        "--test", str(folder / "test.h5")], check=True, cwd=REPO,
                       stdout=subprocess.DEVNULL)
        ms = host_startup(["predict", "mlp", "-i", str(folder / "test.h5")], args.repeat,
                          folder)
        print(f"{'kmodel predict: host start-up':>28}: {ms:6.0f} ms   target 100 ms: "
              f"{ms / 100:4.2f}x the target (until the runner is spawned)")


if __name__ == "__main__":
    main()
