"""DAG scale: `kmodel run CONFIG -n` on a composition of many models against Snakemake's own
dry run of a bare Snakefile with the same DAG shape (same rules, files and dependencies,
no kmodel). Prints both wall times and their ratio (target: kmodel within 1.5x).

    python tests/bench/bench_dag.py [--models 1000] [--repeat 3]

Not collected by pytest. Everything is generated in a temporary folder: N copies of a tiny
model (spec, code, one weight file) sharing one env.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
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
        return x @ self.w

    def set_weights(self, w):
        self.w = w["lin-w-0"]


def build():
    return Linear()
"""

SPEC = """\
name: {name}
version: 0.1.0
env: numpy2
entrypoint: model.py:build
inputs:
  - {{name: x, dtype: float32, shape: [30]}}
outputs:
  - {{name: p, dtype: float32, shape: []}}
weights:
  path: weights
  sha256: {{params.json: {params}, lin-w-0.npy: {weight}}}
"""

# the same DAG as workflows/Snakefile (rules, files, dependencies), without kmodel
BARE = '''\
MODELS = config["models"]
ROOT = f"{config['results']}/{config['name']}"


def model_files(m):
    return [f"model_specs/{m}/model.yaml", f"model_specs/{m}/model.py",
            f"model_specs/{m}/weights/params.json", f"model_specs/{m}/weights/lin-w-0.npy"]


rule all:
    input: f"{ROOT}/scores.json"

rule data:
    output: train=f"{ROOT}/data/train.h5", test=f"{ROOT}/data/test.h5"
    shell: "touch {output}"

rule env:
    input: "envs/{env}.lock"
    output: f"{ROOT}/envs/{{env}}.json"
    shell: "touch {output}"

rule predict:
    input:
        train=f"{ROOT}/data/train.h5", test=f"{ROOT}/data/test.h5",
        model=lambda wc: model_files(wc.model), env=f"{ROOT}/envs/numpy2.json"
    output: train=f"{ROOT}/preds/{{model}}/train.h5", test=f"{ROOT}/preds/{{model}}/test.h5"
    shell: "touch {output}"

rule compose_train:
    input:
        preds=[f"{ROOT}/preds/{m}/train.h5" for m in MODELS],
        targets=f"{ROOT}/data/train.h5", model=model_files("stacker"),
        env=f"{ROOT}/envs/numpy2.json"
    output: directory(f"{ROOT}/ensembler/stacker")
    shell: "mkdir -p {output}"

rule compose_predict:
    input: preds=[f"{ROOT}/preds/{m}/test.h5" for m in MODELS], w=f"{ROOT}/ensembler/stacker"
    output: f"{ROOT}/ensemble/test.h5"
    shell: "touch {output}"

rule score:
    input:
        preds=[f"{ROOT}/preds/{m}/test.h5" for m in MODELS],
        ensemble=f"{ROOT}/ensemble/test.h5", targets=f"{ROOT}/data/test.h5"
    output: f"{ROOT}/scores.json"
    shell: "touch {output}"
'''


def make(folder: Path, n: int) -> list[str]:
    from kmodel._fs import sha256_file

    shutil.copytree(REPO / "envs", folder / "envs")
    names = [f"m{i:04d}" for i in range(n)]
    for name in [*names, "stacker"]:
        m = folder / "model_specs" / name
        (m / "weights").mkdir(parents=True)
        (m / "model.py").write_text(MODEL)
        (m / "weights" / "params.json").write_text('{"weights": ["lin-w-0"]}\n')
        np.save(m / "weights" / "lin-w-0.npy", np.ones(30, np.float32))
        (m / "model.yaml").write_text(SPEC.format(
            name=name, params=sha256_file(m / "weights" / "params.json"),
            weight=sha256_file(m / "weights" / "lin-w-0.npy")))
    config = ("name: big\nresults: results\ndata: {builtin: breast_cancer}\n"
              f"models: [{', '.join(names)}]\nensembler: stacker\n")
    (folder / "big.yaml").write_text(config)
    (folder / "Snakefile.bare").write_text(BARE)
    return names


def timed(cmd: list[str], cwd: Path, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if res.returncode != 0:
            sys.exit(f"failed: {' '.join(cmd)}\n{res.stderr[-2000:]}")
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kmodel-dag-") as tmp:
        folder = Path(tmp)
        make(folder, args.models)
        env = {**os.environ, "KMODEL_HOME": str(folder / "home")}
        os.environ.update(env)
        bare = timed([sys.executable, "-m", "snakemake", "-s", "Snakefile.bare",
                      "--configfile", "big.yaml", "-n", "--cores", "2", "--quiet"],
                     folder, args.repeat)
        ours = timed([sys.executable, "-m", "kmodel", "run", "big.yaml", "-n", "--quiet"],
                     folder, args.repeat)
    jobs = 2 * 1 + args.models + 4
    print(f"DAG of {args.models} models x 2 splits ({jobs} jobs), {os.cpu_count()} cores, "
          f"median of {args.repeat}:")
    print(f"  snakemake -n, bare Snakefile   {bare:6.2f} s")
    print(f"  kmodel run -n                  {ours:6.2f} s")
    print(f"  ratio                          {ours / bare:6.2f}x  (target <= 1.5x)")


if __name__ == "__main__":
    main()
