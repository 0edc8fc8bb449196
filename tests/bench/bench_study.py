"""The ensembles study: `kmodel run` (cross-fitted, default settings) of the study's base
models (tests/study/: a linear model, k-nearest neighbours, a memorising 1-nearest
neighbour) on scikit-learn's bundled data sets, several seeds each, against the best base
model, the simple average and scikit-learn's StackingClassifier/Regressor (cv=5) of the
same kinds of models on the same split. Prints the test log-loss (RMSE for regression),
mean ± sd over seeds, and how often the ensemble is within 1.05x (and 1.5x) of the best
base model. Every run's score table is also checked against scikit-learn's metrics.

    python tests/bench/bench_study.py [--seeds 5] [--folds 5] [--data breast_cancer ...]

Not collected by pytest (a few minutes per data set on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests import stacking_study as study


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--data", nargs="*", default=list(study.DATA))
    args = ap.parse_args()
    home = tempfile.mkdtemp(prefix="kmodel-study-home-")
    env = {**os.environ, "KMODEL_HOME": home}
    rows, ratios = [], []
    for name in args.data:
        found: dict[str, list[float]] = {"ensemble": [], "best base": [], "average": [],
                                         "sklearn stacking": []}
        for seed in range(args.seeds):
            with tempfile.TemporaryDirectory(prefix="kmodel-study-") as tmp:
                folder = study.project(Path(tmp))
                study.split(name, seed, folder)
                doc = study.run(folder, study.composition("s", args.folds), env=env)
                checked = study.recompute(folder, "s", doc)
                for label, want in checked.items():  # every number, scikit-learn's
                    for metric, value in want.items():
                        got = doc["scores"][label][metric]
                        assert value is None or abs(got - value) <= 1e-5 * abs(value) + 1e-9,\
                            (name, seed, label, metric, got, value)
                primary = doc["primary"]
                found["ensemble"].append(doc["scores"]["ensemble"][primary])
                found["best base"].append(min(doc["scores"][m][primary] for m in study.MODELS))
                found["average"].append(doc["scores"]["average"][primary])
                found["sklearn stacking"].append(study.sklearn_stacking(name, seed, folder))
                ratios.append(study.ratio(doc))
                print(f"  {name} seed {seed}: ensemble / best base {ratios[-1]:.3f}",
                      flush=True)
        rows.append((name, study.DATA[name][0], found))
    print(f"\ntest log-loss (RMSE for regression), mean ± sd over {args.seeds} seeds, "
          f"{args.folds} folds, {os.cpu_count()} cores:")
    print(f"{'data':<15} {'task':<11} " + " ".join(f"{k:>18}" for k in rows[0][2]))
    for name, task, found in rows:
        print(f"{name:<15} {task:<11} " + " ".join(
            f"{np.mean(v):>10.4f} ± {np.std(v):<6.4f}" for v in found.values()))
    r = np.array(ratios)
    print(f"\nensemble / best base model: within 1.05x in {np.mean(r <= 1.05):.0%} of "
          f"{len(r)} runs, within 1.5x in {np.mean(r <= 1.5):.0%}; worst {r.max():.3f}, "
          f"median {np.median(r):.3f}")


if __name__ == "__main__":
    main()
