"""The composer: id alignment, its errors, and training/applying the ensembler."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from kmodel import compose, scores
from kmodel.errors import IdAlignmentError, InputSchemaError, TargetLengthError
from kmodel.io import hdf5
from kmodel.predict import predict
from kmodel.registry import Registry


def preds_file(path: Path, ids: list[str], values: np.ndarray) -> Path:
    hdf5.write_table(path, {"preds": {"proba": values.astype(np.float32)}}, ids)
    return path


def test_stack_aligns_by_id(tmp_path: Path) -> None:
    a = preds_file(tmp_path / "a.h5", ["x", "y", "z"], np.array([0.1, 0.2, 0.3]))
    b = preds_file(tmp_path / "b.h5", ["z", "x", "y"], np.array([0.93, 0.91, 0.92]))
    x, ids, sources = compose.stack([a, b])
    assert list(ids) == [b"x", b"y", b"z"] and sources == ["a:proba", "b:proba"]
    np.testing.assert_allclose(x, [[0.1, 0.91], [0.2, 0.92], [0.3, 0.93]], rtol=1e-6)


def test_missing_id_is_an_error(tmp_path: Path) -> None:
    a = preds_file(tmp_path / "a.h5", ["x", "y", "z"], np.zeros(3))
    b = preds_file(tmp_path / "b.h5", ["x", "z", "w"], np.zeros(3))
    with pytest.raises(IdAlignmentError, match=r"b\.h5: 1 id\(s\) of the reference file are "
                       r"missing, e\.g\. 'y'"):
        compose.stack([a, b])


def test_duplicated_id_is_an_error(tmp_path: Path) -> None:
    a = preds_file(tmp_path / "a.h5", ["x", "y"], np.zeros(2))
    b = preds_file(tmp_path / "b.h5", ["x", "y", "y"], np.zeros(3))
    with pytest.raises(IdAlignmentError, match=r"duplicated id\(s\).*'y'"):
        compose.stack([a, b])


def test_extra_ids_are_an_error(tmp_path: Path) -> None:
    a = preds_file(tmp_path / "a.h5", ["x"], np.zeros(1))
    b = preds_file(tmp_path / "b.h5", ["x", "q"], np.zeros(2))
    with pytest.raises(IdAlignmentError, match="1 id"):
        compose.stack([a, b])


def test_targets_length_mismatch(tmp_path: Path) -> None:
    t = tmp_path / "t.h5"
    with h5py.File(t, "w") as f:
        f["targets/y"] = np.zeros(3)
        f["metadata/id"] = np.array([b"a", b"b"])
    with pytest.raises(TargetLengthError, match="has 3 rows but /metadata/id has 2"):
        scores.score({"a": preds_file(tmp_path / "a.h5", ["a", "b"], np.zeros(2))}, t)


def test_roc_auc_matches_pairwise_definition() -> None:
    from kmodel import metrics

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.normal(size=200) + y, 1)  # rounded: plenty of ties
    pos, neg = s[y == 1], s[y == 0]
    pairwise = np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :]))
    assert metrics.roc_auc(y, s) == pytest.approx(pairwise)


@pytest.mark.slow
def test_train_and_apply_ensembler_in_its_env(project: Path) -> None:
    from kmodel.registry import Registry

    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 2, n)
    ids = [f"s{i}" for i in range(n)]
    hdf5.write_table(project / "targets.h5", {"targets": {"y": y}}, ids)
    good = np.clip(0.8 * y + 0.1 + rng.normal(0, 0.05, n), 0.01, 0.99)
    noise = rng.uniform(0.01, 0.99, n)
    order = rng.permutation(n)  # the second file stores its rows in another order
    p1 = preds_file(project / "p1.h5", ids, good)
    p2 = preds_file(project / "p2.h5", [ids[i] for i in order], noise[order])
    reg = Registry()
    w = compose.train(reg, "stacker", [p1, p2], project / "targets.h5", project / "w")
    coef = np.load(w.folder / "stacker-coef-0.npy")
    assert coef[0] > 5 * abs(coef[1])  # it learned which base model to trust
    out = compose.apply(reg, "stacker", [p1, p2], project / "w", project / "ens.h5")
    table = scores.score({"ens": out}, project / "targets.h5").scores
    assert table["ens"]["roc_auc"] > 0.99
    for wrong in ([p2, p1], [p1]):  # another order, a missing model: refused, not guessed
        with pytest.raises(InputSchemaError, match=r"was trained on p1:proba, p2:proba \(in "
                           r"this order\)"):
            compose.apply(reg, "stacker", wrong, project / "w", project / "bad.h5")
    assert not (project / "bad.h5").exists()


@pytest.mark.slow  # runs the toy model and the stacker in their env
def test_kipoi_prediction_files_ensemble_with_kmodel_ones(project: Path) -> None:
    """`kipoi predict --keep_metadata` writes one /preds dataset (here float64 (N, 2)) and
    integer ids, and no kmodel provenance; the composer takes such files beside kmodel's
    (Kipoi itself needs numpy<2: the file is written here in its layout)."""

    rows = 200
    rng = np.random.default_rng(1)
    ids = np.arange(1000, 1000 + rows, dtype=np.int64)
    with h5py.File(project / "in.h5", "w") as f:
        f["inputs/x"] = rng.normal(size=(rows, 3)).astype(np.float32)
        f["targets/y"] = (f["inputs/x"][:, 0] > 0).astype(np.int64)
        f["metadata/id"] = ids
    predict(Registry(), "toy", project / "in.h5", project / "toy.h5")
    order = rng.permutation(rows)  # Kipoi's rows in its dataloader's order, not ours
    with h5py.File(project / "in.h5") as f:
        signal = f["inputs/x"][:, 0].astype(np.float64)
    kipoi_preds = np.stack([1 / (1 + np.exp(signal)), 1 / (1 + np.exp(-signal))], axis=1)
    with h5py.File(project / "kipoi.h5", "w") as f:
        f["preds"] = kipoi_preds[order]
        f["metadata/id"] = ids[order]
    x, _, sources = compose.stack([project / "toy.h5", project / "kipoi.h5"])
    assert x.shape == (rows, 4) and sources[1] == "kipoi:preds"
    np.testing.assert_allclose(x[:, 2:], kipoi_preds, rtol=1e-6)  # aligned back by id
    preds = [project / "toy.h5", project / "kipoi.h5"]
    with pytest.raises(InputSchemaError, match=r"toy.h5 holds several predictions \(norm, y\)"):
        compose.train(Registry(), "stacker", preds, project / "in.h5", project / "w")
    compose.train(Registry(), "stacker", preds, project / "in.h5", project / "w",
                  outputs={"toy": "y"})  # Kipoi's [P(y=0), P(y=1)]: its P(y=1) goes in
    out = compose.apply(Registry(), "stacker", preds, project / "w", project / "ens.h5")
    with h5py.File(out) as f:
        assert list(f["metadata/id"][()]) == list(ids)
        proba = f["preds/pred"][()]
    assert proba.shape == (rows,)
    accuracy = np.mean((proba > 0.5) == (signal > 0))
    assert accuracy > 0.95  # the Kipoi model's column carries the signal
