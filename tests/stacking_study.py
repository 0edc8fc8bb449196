"""A study of kmodel's ensembles, shared by tests/test_stacking.py (a few runs) and
tests/bench/bench_study.py (data sets x seeds): compositions of base models that kmodel's
own specs do not ship (tests/study/: a linear model, k-nearest neighbours and a 1-nearest
neighbour, which memorises its training rows) on scikit-learn's bundled data sets, run by
`kmodel run` with its default settings, and every number of the score table recomputed
with scikit-learn from the stored predictions.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from sklearn import datasets
from sklearn import metrics as sk

from kmodel.io import hdf5

REPO = Path(__file__).resolve().parents[1]
STUDY = Path(__file__).resolve().parent / "study"
MODELS = ["linear", "knn", "nn1"]


def _diabetes_high() -> tuple[np.ndarray, np.ndarray]:
    x, y = datasets.load_diabetes(return_X_y=True)
    return x, (y > np.median(y)).astype(np.int64)


def _friedman(seed: int) -> tuple[np.ndarray, np.ndarray]:
    return datasets.make_friedman1(n_samples=600, noise=1.0, random_state=seed)


#: name -> (task, a function of the seed giving X and y)
DATA: dict[str, tuple[str, Callable[[int], tuple[np.ndarray, np.ndarray]]]] = {
    "breast_cancer": ("binary", lambda s: datasets.load_breast_cancer(return_X_y=True)),
    "diabetes_high": ("binary", lambda s: _diabetes_high()),
    "wine": ("multiclass", lambda s: datasets.load_wine(return_X_y=True)),
    "digits": ("multiclass", lambda s: datasets.load_digits(return_X_y=True)),
    "diabetes": ("regression", lambda s: datasets.load_diabetes(return_X_y=True)),
    "friedman1": ("regression", _friedman),
}


def split(name: str, seed: int, folder: Path, test_fraction: float = 0.3) -> tuple[Path, Path]:
    """train.h5 and test.h5 of a data set, split by ``seed``."""
    task, load = DATA[name]
    x, y = load(seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    cut = round(len(y) * (1 - test_fraction))
    ids = np.array([f"{name}-{i:05d}" for i in range(len(y))])
    files = []
    for part, rows in (("train", order[:cut]), ("test", order[cut:])):
        path = folder / f"{part}.h5"
        target = y[rows].astype(np.float64 if task == "regression" else np.int64)
        hdf5.write_table(path, {"inputs": {"x": x[rows].astype(np.float32)},
                                "targets": {"y": target}}, ids[rows])
        files.append(path)
    return files[0], files[1]


def project(folder: Path) -> Path:
    """A project with the repo's envs, its stacker and the study's models."""
    shutil.copytree(REPO / "envs", folder / "envs")
    shutil.copytree(REPO / "model_specs" / "stacker", folder / "model_specs" / "stacker")
    for model in MODELS:
        shutil.copytree(STUDY / model, folder / "model_specs" / model)
    return folder


def composition(name: str, folds: int = 5, extra: str = "") -> str:
    return (f"name: {name}\nresults: out\ndata: {{train: train.h5, test: test.h5}}\n"
            f"models: [{', '.join(MODELS)}]\nensembler: stacker\n"
            f"stacking: {{folds: {folds}}}\n{extra}")


def run(folder: Path, config: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """`kmodel run` of a composition in ``folder``; its score document."""
    (folder / "c.yaml").write_text(config)
    res = subprocess.run([sys.executable, "-m", "kmodel", "run", "c.yaml", "--cores", "2"],
                         cwd=folder, capture_output=True, text=True, env=env, timeout=1200)
    if res.returncode != 0:
        raise AssertionError(res.stderr[-4000:])
    name = config.split("\n", 1)[0].split(": ", 1)[1]
    doc: dict[str, Any] = json.loads((folder / "out" / name / "scores.json").read_text())
    return doc


def _prediction(path: Path, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The single prediction dataset of a file, in the order of ``ids``."""
    with h5py.File(path, "r") as f:
        (values,) = [d[()] for d in f["preds"].values()]
        own = hdf5.as_ids(f["metadata/id"][()])
    where = {bytes(i): k for k, i in enumerate(own)}
    return values[[where[bytes(i)] for i in ids]], values


def sklearn_scores(task: str, y: np.ndarray, pred: np.ndarray, classes: list[Any]
                   ) -> dict[str, float | None]:
    """The metrics of a task, computed by scikit-learn."""
    if task == "binary":
        return {"log_loss": sk.log_loss(y, pred, labels=classes),
                "roc_auc": sk.roc_auc_score(y, pred),
                "brier": sk.brier_score_loss(y, pred, pos_label=classes[-1]),
                "accuracy": sk.accuracy_score(y, np.where(pred > 0.5, classes[-1],
                                                          classes[0]))}
    if task == "multiclass":
        present = len(np.unique(y)) == len(classes)
        return {"log_loss": sk.log_loss(y, pred, labels=classes),
                "accuracy": sk.accuracy_score(y, np.asarray(classes)[pred.argmax(1)]),
                "roc_auc_ovr": sk.roc_auc_score(y, pred, multi_class="ovr",
                                                labels=classes) if present else None}
    return {"rmse": sk.root_mean_squared_error(y, pred),
            "mae": sk.mean_absolute_error(y, pred), "r2": sk.r2_score(y, pred)}


def recompute(folder: Path, name: str, doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every test score of the table (each model, the ensemble, the average), recomputed
    with scikit-learn from the stored predictions."""
    root = folder / "out" / name
    with h5py.File(folder / "test.h5", "r") as f:
        y, ids = f["targets/y"][()], hdf5.as_ids(f["metadata/id"][()])
    preds = {m: _prediction(root / "preds" / m / "test.h5", ids)[0] for m in MODELS}
    preds["ensemble"] = _prediction(root / "ensemble" / "test.h5", ids)[0]
    found = {label: sklearn_scores(doc["task"], y, p, doc["classes"])
             for label, p in preds.items()}
    average = np.mean([preds[m].astype(np.float64) for m in MODELS], axis=0)
    found["average"] = sklearn_scores(doc["task"], y, average, doc["classes"])
    return found


def ratio(doc: dict[str, Any]) -> float:
    """The ensemble's primary metric (log-loss, RMSE) over the best base model's (test)."""
    primary = doc["primary"]
    best = min(doc["scores"][m][primary] for m in MODELS)
    return float(doc["scores"]["ensemble"][primary] / best)


def sklearn_stacking(name: str, seed: int, folder: Path) -> float:
    """scikit-learn's StackingClassifier/Regressor (cv=5) of the same kinds of models on
    the same split: its test log-loss (RMSE), for reference."""
    from sklearn.ensemble import StackingClassifier, StackingRegressor
    from sklearn.linear_model import LogisticRegression, Ridge, RidgeCV
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    task = DATA[name][0]
    data = {}
    for part in ("train", "test"):
        with h5py.File(folder / f"{part}.h5", "r") as f:
            data[part] = (f["inputs/x"][()], f["targets/y"][()])
    (x, y), (xt, yt) = data["train"], data["test"]
    if task == "regression":
        reg = StackingRegressor([
            ("linear", make_pipeline(StandardScaler(), Ridge(1e-3 * len(y)))),
            ("knn", make_pipeline(StandardScaler(), KNeighborsRegressor(15))),
            ("nn1", make_pipeline(StandardScaler(), KNeighborsRegressor(1)))],
            final_estimator=RidgeCV(), cv=5)
        return float(sk.root_mean_squared_error(yt, reg.fit(x, y).predict(xt)))
    clf = StackingClassifier([
        ("linear", make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))),
        ("knn", make_pipeline(StandardScaler(), KNeighborsClassifier(15))),
        ("nn1", make_pipeline(StandardScaler(), KNeighborsClassifier(1)))],
        final_estimator=LogisticRegression(max_iter=2000), cv=5,
        stack_method="predict_proba")
    proba = clf.fit(x, y).predict_proba(xt)
    return float(sk.log_loss(yt, proba, labels=clf.classes_))
