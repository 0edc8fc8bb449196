"""What cross-fitting costs: `kmodel run` of a cross-fitted composition (every base model
fitted once per fold and once on the whole train split, in its own env, as Snakemake jobs)
against scikit-learn's StackingClassifier(cv=5) of the same models on the same data, in one
process. Prints both wall times, the ratio, and how kmodel's time grows with the folds and
the models; the smallest data set shows what start-up (processes, envs, Snakemake) costs.

    python tests/bench/bench_crossfit.py [--rows 1000000] [--folds 2 5 10]

The models: the repo's logreg (scikit-learn's LogisticRegression behind a StandardScaler)
and gnb (GaussianNB), both in the scikit-learn 1.3 env; the reference runs scikit-learn
1.3's own estimators in that same env (`kmodel env path logreg`). Not collected by pytest.
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
KMODEL = [sys.executable, "-m", "kmodel"]
REFERENCE = """\
import sys, time, h5py, numpy as np
from sklearn.ensemble import StackingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
folds, models = int(sys.argv[2]), sys.argv[3].split(",")
with h5py.File(sys.argv[1] + "/train.h5") as f:
    x, y = f["inputs/x"][()], f["targets/y"][()]
with h5py.File(sys.argv[1] + "/test.h5") as f:
    xt = f["inputs/x"][()]
make = {"logreg": lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
        "gnb": lambda: GaussianNB()}
t0 = time.perf_counter()
clf = StackingClassifier([(m, make[m]()) for m in models], cv=folds,
                         final_estimator=LogisticRegression(), stack_method="predict_proba")
clf.fit(x, y).predict_proba(xt)
print(time.perf_counter() - t0)
"""


def data(folder: Path, rows: int) -> None:
    """breast_cancer (rows 0) or a synthetic binary table of ``rows`` x 30, train/test."""
    if rows == 0:
        subprocess.run([*KMODEL, "data", "breast_cancer", "--train", str(folder / "train.h5"),
                        "--test", str(folder / "test.h5")], check=True, capture_output=True)
        return
    from sklearn.datasets import make_classification

    from kmodel.io import hdf5

    x, y = make_classification(n_samples=rows, n_features=30, n_informative=10,
                               random_state=0)
    ids = np.char.encode(np.char.add("r", np.arange(rows).astype("U9")), "ascii")
    cut = int(rows * 0.7)
    for part, sl in (("train", slice(0, cut)), ("test", slice(cut, rows))):
        hdf5.write_table(folder / f"{part}.h5", {"inputs": {"x": x[sl].astype(np.float32)},
                                                 "targets": {"y": y[sl]}}, ids[sl])


def kmodel_run(folder: Path, models: list[str], folds: int) -> float:
    config = folder / "c.yaml"
    config.write_text(f"name: c{folds}-{len(models)}\nresults: out\n"
                      "data: {train: train.h5, test: test.h5}\n"
                      f"models: [{', '.join(models)}]\nensembler: stacker\n"
                      f"stacking: {{folds: {folds}}}\n")
    t0 = time.perf_counter()
    subprocess.run([*KMODEL, "run", str(config), "--cores", "2"], cwd=folder, check=True,
                   capture_output=True)
    return time.perf_counter() - t0


def reference(folder: Path, models: list[str], folds: int) -> float:
    env = subprocess.run([*KMODEL, "env", "path", "logreg"], cwd=folder, check=True,
                         capture_output=True, text=True).stdout.strip()
    t0 = time.perf_counter()
    subprocess.run([f"{env}/bin/python", "-c", REFERENCE, str(folder), str(folds),
                    ",".join(models)], check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--folds", type=int, nargs="*", default=[2, 5, 10])
    args = ap.parse_args()
    print(f"{os.cpu_count()} cores; kmodel run --cores 2 (envs built) vs "
          "StackingClassifier in one process (whole processes, data written beforehand)")
    with tempfile.TemporaryDirectory(prefix="kmodel-crossfit-") as tmp:
        for rows in (0, args.rows):
            folder = Path(tmp) / f"rows-{rows}"
            folder.mkdir()
            for name in ("envs", "model_specs"):
                shutil.copytree(REPO / name, folder / name)
            data(folder, rows)
            subprocess.run([*KMODEL, "env", "create", "--all"], cwd=folder, check=True,
                           capture_output=True)
            label = "breast_cancer (398 train rows)" if rows == 0 else f"{rows:,} rows x 30"
            print(f"\n{label}:")
            for folds in args.folds:
                for models in (["logreg"], ["logreg", "gnb"]):
                    ours = kmodel_run(folder, models, folds)
                    theirs = reference(folder, models, folds)
                    print(f"  {folds:>2} folds, {len(models)} model(s): kmodel {ours:7.1f} s, "
                          f"StackingClassifier {theirs:7.1f} s, ratio {ours / theirs:5.2f}x")
                    shutil.rmtree(folder / "out")


if __name__ == "__main__":
    main()
