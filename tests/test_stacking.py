"""Ensembles that can be trusted: cross-fitted by default, every task, scores that equal
scikit-learn's, and an ensembler never fitted on rows a base model was trained on (unless
asked, and then flagged). The base models are the study's (tests/study/: a linear model,
k-nearest neighbours, and a 1-nearest neighbour that memorises its training rows)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kmodel.folds import assign

from . import stacking_study as study

KMODEL = [sys.executable, "-m", "kmodel"]


def test_folds_are_stratified_balanced_and_follow_the_ids_not_the_row_order() -> None:
    rng = np.random.default_rng(0)
    ids = np.array([f"r{i:04d}".encode() for i in range(503)])
    y = rng.integers(0, 3, 503)
    fold = assign(ids, y, 5, seed=7, stratified=True)
    for c in range(3):  # every class spread evenly over the folds
        counts = np.bincount(fold[y == c], minlength=5)
        assert counts.max() - counts.min() <= 1
    assert np.ptp(np.bincount(fold)) <= 1
    order = rng.permutation(503)  # the same rows in another order: the same folds
    assert np.array_equal(assign(ids[order], y[order], 5, 7, True), fold[order])
    assert not np.array_equal(assign(ids, y, 5, 8, True), fold)  # another seed, other folds


@pytest.mark.slow
@pytest.mark.parametrize("data", ["breast_cancer", "wine", "diabetes"])
def test_each_task_is_cross_fitted_and_scored_as_scikit_learn_scores_it(
        data: str, tmp_path: Path, kmodel_home: Path) -> None:
    folder = study.project(tmp_path)
    study.split(data, 0, folder)
    passthrough = data == "breast_cancer"  # the raw features go to the ensembler too
    doc = study.run(folder, study.composition("s", folds=3, extra="passthrough: [x]\n"
                                              if passthrough else ""))
    task = study.DATA[data][0]
    if passthrough:
        from kmodel.provenance import read_folder_record

        kept = read_folder_record(folder / "out" / "s" / "ensembler" / "stacker")
        assert kept is not None and kept.sources == [*(f"{m}:pred" for m in study.MODELS),
                                                     "data:x"]
        assert kept.column_weights is not None and len(kept.column_weights) == 3 + 30
    assert doc["task"] == task and doc["stacking"] == "cv" and doc["flags"] == []
    # every number of the table is scikit-learn's, on the stored predictions
    found = study.recompute(folder, "s", doc)
    for label, want in found.items():
        for metric, value in want.items():
            got = doc["scores"][label][metric]
            assert (got is None) == (value is None), (label, metric)
            assert value is None or got == pytest.approx(value, rel=1e-5, abs=1e-9), \
                (label, metric, got, value)
    # the ensemble is no worse than its best base model by much, even with a memoriser
    assert study.ratio(doc) <= 1.5, doc["scores"]
    board = {row["label"]: row for row in doc["leaderboard"]}
    assert set(board) == {*study.MODELS, "ensemble", "average"}
    assert doc["best"] in study.MODELS and board[doc["best"]]["best"]
    assert set(doc["weights"]) == set(study.MODELS)
    level = doc["level_one"]
    assert set(level) == {*study.MODELS, "average", "ensemble"}
    assert level["nn1"][doc["primary"]] > 0  # the ensemble's: the stacker's own cv loss
    assert level["ensemble"][doc["primary"]] == doc["ensembler"]["cv"]
    svg = (folder / "out" / "s" / "scores.svg").read_text()
    assert svg.startswith("<svg") and all(m in svg for m in study.MODELS)
    ensemble = folder / "out" / "s" / "ensemble" / "test.h5"
    import h5py

    with h5py.File(ensemble, "r") as f:  # P(y=1); class probabilities; values
        shape = f["preds/pred"].shape
    rows = shape[0]
    assert shape == {"binary": (rows,), "multiclass": (rows, 3), "regression": (rows,)}[task]
    status = subprocess.run([*KMODEL, "status", "c.yaml"], cwd=folder, capture_output=True,
                            text=True)
    assert status.returncode == 0, status.stdout


@pytest.mark.slow
def test_an_ensembler_fitted_on_rows_a_base_model_saw_is_refused(project: Path) -> None:
    """The shipped base models were trained on breast_cancer's seed-0 train split."""
    res = subprocess.run([*KMODEL, "data", "breast_cancer", "--train", "train.h5", "--test",
                          "test.h5", "--blend", "blend.h5"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    leaky = ("name: leaky\nresults: out\ndata: {blend: train.h5, test: test.h5}\n"
             "models: [logreg, mlp]\nensembler: stacker\n")
    (project / "leaky.yaml").write_text(leaky)
    res = subprocess.run([*KMODEL, "run", "leaky.yaml", "--cores", "2"], capture_output=True,
                         text=True)
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert "Error [KM606]" in last and "model 'logreg'" in last and "398 of the 398" in last, \
        last
    (project / "honest.yaml").write_text(leaky.replace("leaky", "honest").replace(
        "blend: train.h5", "blend: blend.h5"))
    res = subprocess.run([*KMODEL, "run", "honest.yaml", "--cores", "2"], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads((project / "out/honest/scores.json").read_text())
    assert doc["stacking"] == "holdout" and doc["flags"] == []
    # in-sample on purpose: it runs, and every table says so
    (project / "insample.yaml").write_text(leaky.replace("leaky", "insample").replace(
        "blend: train.h5", "train: train.h5") + "stacking: {method: in-sample}\n")
    res = subprocess.run([*KMODEL, "run", "insample.yaml", "--cores", "2"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "FLAG: in-sample stacking" in res.stdout
    doc = json.loads((project / "out/insample/scores.json").read_text())
    assert doc["stacking"] == "in-sample" and doc["flags"][0].startswith("in-sample")


def test_a_composition_that_cannot_keep_the_rows_apart_is_refused_before_running(
        project: Path) -> None:
    """A model without train: cannot be cross-fitted; without a blend split the ensembler
    would be fitted in-sample: refused with how to fix it, before Snakemake starts."""
    spec = project / "model_specs" / "gnb" / "model.yaml"
    spec.write_text(spec.read_text().replace("train:\n  args: {}\n", ""))
    (project / "c.yaml").write_text("name: c\ndata: {builtin: breast_cancer}\n"
                                    "models: [logreg, gnb]\nensembler: stacker\n")
    res = subprocess.run([*KMODEL, "run", "c.yaml"], capture_output=True, text=True)
    assert res.returncode == 1 and "Building DAG" not in res.stderr
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("Error [KM101]: c.yaml: data.blend: models ['gnb'] cannot be "
                           "trained"), line
    assert "stacking: {method: in-sample}" in line
    (project / "c.yaml").write_text("name: c\ndata: {builtin: breast_cancer}\n"
                                    "models: [logreg, gnb]\nensembler: stacker\n"
                                    "stacking: {method: cv}\n")
    res = subprocess.run([*KMODEL, "status", "c.yaml"], capture_output=True, text=True)
    assert "stacking.method: models ['gnb'] have no train: entry" in res.stderr


@pytest.mark.slow
def test_a_model_fed_by_another_models_predictions_is_cross_fitted_too(
        tmp_path: Path, kmodel_home: Path) -> None:
    """Kipoi's composing models: `refine` takes the raw features and knn's prediction. Its
    input files are assembled from knn's out-of-fold (train) and test predictions, it is
    cross-fitted on the same folds, and the ensembler takes all three models."""
    import shutil

    import h5py

    folder = study.project(tmp_path)
    refine = folder / "model_specs" / "refine"
    shutil.copytree(folder / "model_specs" / "linear", refine)
    spec = refine / "model.yaml"
    spec.write_text(spec.read_text().replace("name: linear", "name: refine"))
    study.split("breast_cancer", 1, folder)
    config = study.composition("g", folds=2).replace(
        "models: [linear, knn, nn1]", "models: [linear, knn, refine]")
    doc = study.run(folder, config + "inputs: {refine: {x: [data.x, knn.pred]}}\n")
    root = folder / "out" / "g"
    with h5py.File(root / "inputs" / "refine" / "train.h5", "r") as f:
        assert f["inputs/x"].shape[1] == 30 + 1 and "targets/y" in f
    with h5py.File(root / "preds" / "knn" / "train.h5", "r") as f, \
            h5py.File(root / "inputs" / "refine" / "train.h5", "r") as g:  # its OOF column
        assert np.allclose(g["inputs/x"][:, 30], f["preds/pred"][()])
    assert sorted(p.name for p in (root / "folds" / "refine").iterdir()) == sorted(
        f"fold-{k}-{part}.h5" for k in (0, 1) for part in ("fit", "holdout"))
    assert set(doc["scores"]) == {"linear", "knn", "refine", "ensemble", "average"}
    status = subprocess.run([*KMODEL, "status", "c.yaml"], cwd=folder, capture_output=True,
                            text=True)
    assert status.returncode == 0, status.stdout
    code = folder / "model_specs" / "knn" / "model.py"  # knn changed: refine is stale too
    code.write_text(code.read_text() + "\n# reviewed\n")
    status = subprocess.run([*KMODEL, "status", "c.yaml", "--json"], cwd=folder,
                            capture_output=True, text=True)
    stale = {e["path"] for e in json.loads(status.stdout) if e["state"] != "fresh"}
    assert "out/g/inputs/refine/train.h5" in stale and "out/g/preds/refine/test.h5" in stale
    assert "out/g/preds/linear/test.h5" not in stale


def test_a_cycle_of_models_feeding_each_other_is_refused(project: Path) -> None:
    (project / "c.yaml").write_text(
        "name: c\ndata: {builtin: breast_cancer}\nmodels: [logreg, mlp]\n"
        "ensembler: stacker\ninputs: {logreg: {x: mlp.proba}, mlp: {x: logreg.proba}}\n")
    res = subprocess.run([*KMODEL, "validate", "c.yaml"], capture_output=True, text=True)
    assert res.returncode == 1
    assert "inputs make a cycle through 'logreg'" in res.stderr, res.stderr
