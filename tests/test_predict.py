"""Prediction through a real uv env and the in-env runner, into real HDF5 files."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from kmodel.errors import (
    HashMismatchError,
    InputMissingError,
    InputSchemaError,
    ModelError,
    WeightsMissingError,
)
from kmodel.io import hdf5
from kmodel.predict import partial_path, predict
from kmodel.registry import Registry

from .conftest import make_input

pytestmark = pytest.mark.slow  # the first test builds the numpy2 env


def expected(x: np.ndarray) -> np.ndarray:
    return (x @ np.array([1.0, -2.0, 0.5]) * 2.0).astype(np.float32)


def test_round_trip_and_provenance(project: Path) -> None:
    x = make_input(project / "in.h5", rows=1000)
    out = predict(Registry(), "toy", project / "in.h5", project / "out.h5", batch_size=64)
    with h5py.File(out) as f:
        np.testing.assert_allclose(f["preds/y"][()], expected(x), rtol=1e-6)
        np.testing.assert_allclose(f["preds/norm"][()], np.linalg.norm(x, axis=1), rtol=1e-6)
        assert f["preds/y"].dtype == np.float32 and f["preds/norm"].dtype == np.float64
        assert f["preds/y"].chunks == (1000,)  # 64-row batches of 4 bytes share one chunk
        assert list(f["metadata/id"][:3]) == [b"r0", b"r1", b"r2"]
        attrs = dict(f.attrs)
    assert attrs["model"] == "toy" and attrs["model_version"] == "0.1.0"
    assert attrs["env_numpy_version"].startswith("2.")
    assert attrs["env_python_version"].startswith("3.11")
    for key in ("spec_sha256", "weights_sha256", "lock_sha256", "input_sha256"):
        assert len(attrs[key]) == 64, key
    assert attrs["schema_version"] == hdf5.SCHEMA_VERSION
    assert not partial_path(out).exists()


def test_batch_size_does_not_change_the_result(project: Path) -> None:
    make_input(project / "in.h5", rows=257)
    a = predict(Registry(), "toy", project / "in.h5", project / "a.h5", batch_size=1)
    b = predict(Registry(), "toy", project / "in.h5", project / "b.h5", batch_size=10_000)
    ra, _ = hdf5.read_group(a, "preds")
    rb, _ = hdf5.read_group(b, "preds")
    assert all(np.array_equal(ra[k], rb[k]) for k in ra)


def test_real_demo_model_in_its_legacy_env(project: Path) -> None:
    from kmodel.datasets import breast_cancer

    breast_cancer(project / "train.h5", project / "test.h5")
    out = predict(Registry(), "logreg", project / "test.h5", project / "p.h5")
    attrs = hdf5.read_attrs(out)
    assert attrs["env_numpy_version"].startswith("1.26")
    preds, ids = hdf5.read_group(out, "preds")
    targets, tids = hdf5.read_group(project / "test.h5", "targets")
    assert np.array_equal(ids, tids)
    accuracy = np.mean((preds["proba"] > 0.5) == targets["y"].astype(bool))
    assert accuracy > 0.9


def test_model_error_leaves_no_output(project: Path) -> None:
    spec = project / "model_specs" / "toy" / "model.yaml"
    spec.write_text(spec.read_text().replace("factor: 2.0", "factor: 2.0\n  fail_at: 50"))
    make_input(project / "in.h5", rows=100)
    with pytest.raises(ModelError) as err:
        predict(Registry(), "toy", project / "in.h5", project / "out.h5", batch_size=10)
    assert err.value.code == "KM500"
    assert "ValueError: toy failure at row 60" in str(err.value)
    assert "Traceback" in (err.value.detail or "")
    assert not (project / "out.h5").exists() and not partial_path(project / "out.h5").exists()


def test_input_checked_before_env_starts(project: Path) -> None:
    reg = Registry()
    with pytest.raises(InputMissingError):
        predict(reg, "toy", project / "nope.h5", project / "o.h5")
    make_input(project / "wide.h5", dim=4)
    with pytest.raises(InputSchemaError, match=r"rows of shape \(4,\), model 'toy' expects \(3,\)"):
        predict(reg, "toy", project / "wide.h5", project / "o.h5")
    hdf5.write_table(project / "str.h5", {"inputs": {"x": np.array([[b"a", b"b", b"c"]])}}, ["i"])
    with pytest.raises(InputSchemaError, match=r"dtype \|S1, model 'toy' expects float32"):
        predict(reg, "toy", project / "str.h5", project / "o.h5")
    hdf5.write_table(project / "named.h5", {"inputs": {"z": np.zeros((2, 3))}}, ["a", "b"])
    with pytest.raises(InputSchemaError, match="no dataset /inputs/x"):
        predict(reg, "toy", project / "named.h5", project / "o.h5")
    assert not list(project.glob("o.h5*"))


def test_weights_are_checked_before_loading(project: Path) -> None:
    make_input(project / "in.h5")
    w = project / "model_specs" / "toy" / "weights" / "scale-w-0.npy"
    np.save(w, np.array([9.0, 9.0, 9.0]))
    with pytest.raises(HashMismatchError) as err:
        predict(Registry(), "toy", project / "in.h5", project / "o.h5")
    assert str(w.relative_to(project)) in str(err.value)
    assert "kmodel hash toy --write" in str(err.value)
    w.unlink()
    with pytest.raises(WeightsMissingError, match=r"scale-w-0\.npy is missing"):
        predict(Registry(), "toy", project / "in.h5", project / "o.h5")


def test_train_writes_weights_with_manifest(project: Path) -> None:
    from kmodel.train import train
    from kmodel.weights import Weights

    x = make_input(project / "t.h5", rows=50)
    y = x @ np.array([0.5, 1.5, -1.0])
    hdf5.write_table(project / "t.h5", {"inputs": {"x": x}, "targets": {"y": y}},
                     [f"r{i}" for i in range(50)])
    w = train(Registry(), "toy", project / "t.h5", project / "w", targets="y")
    assert set(w.sha256) == {"params.json", "provenance.json", "scale-w-0.npy"}
    from kmodel.provenance import read_folder_record

    trained_on = read_folder_record(project / "w").trained_on  # the rows it was fitted on
    assert trained_on is not None and trained_on.rows == 50
    assert trained_on.overlap(hdf5.read_ids(project / "t.h5")) == (50, "r0")
    np.testing.assert_allclose(np.load(project / "w" / "scale-w-0.npy"), [0.5, 1.5, -1.0],
                               rtol=1e-4)
    assert Weights.from_folder(project / "w").sha256 == w.sha256
    assert json.loads((project / "w" / "params.json").read_text())["model"] == "toy"


def test_seeded_script_reproduces_the_shipped_weights(project: Path) -> None:
    """Retrained weights equal the shipped ones within tolerance, not by hash: BLAS kernels
    differ by CPU (here ~1e-14 apart on another machine), so float bits may too."""
    import subprocess
    import sys

    specs = project / "model_specs"
    shipped = {}
    for m in ("logreg", "gnb", "mlp"):
        folder = specs / m / "weights"
        shipped[m] = {f.name: f.read_bytes() if f.suffix == ".json" else np.load(f)
                      for f in folder.iterdir()}
        for f in folder.iterdir():
            f.unlink()
    proc = subprocess.run([sys.executable, str(specs / "train_base_models.py"), *shipped],
                          capture_output=True, text=True)  # (not the framework models)
    assert proc.returncode == 0, proc.stderr
    for m, files in shipped.items():
        folder = specs / m / "weights"
        assert sorted(p.name for p in folder.iterdir()) == sorted(files), m
        for name, old in files.items():
            if name.endswith(".json"):
                assert (folder / name).read_bytes() == old, (m, name)  # no floats: exact
            else:
                new = np.load(folder / name)
                assert new.dtype == old.dtype and new.shape == old.shape, (m, name)
                np.testing.assert_allclose(new, old, rtol=1e-9, atol=1e-12, err_msg=f"{m} {name}")


def test_inputs_reach_the_model_in_the_spec_dtype(project: Path) -> None:
    code = project / "model_specs" / "toy" / "model.py"
    code.write_text(code.read_text().replace(
        "        time.sleep(self.sleep)\n",
        "        time.sleep(self.sleep)\n        assert x.dtype == np.float32, x.dtype\n"))
    x = np.random.default_rng(0).normal(size=(20, 3))  # float64 on disk
    hdf5.write_table(project / "in64.h5", {"inputs": {"x": x}}, [f"r{i}" for i in range(20)])
    out = predict(Registry(), "toy", project / "in64.h5", project / "o.h5")
    preds, _ = hdf5.read_group(out, "preds")
    np.testing.assert_allclose(preds["y"], expected(x.astype(np.float32)), rtol=1e-6)


def test_a_new_model_from_unhashed_weights_to_recorded_ones(project: Path) -> None:
    """`sha256: {}` means "not hashed yet": refused until `kmodel hash --write`, or until
    `kmodel train -o` writes the model's own weights folder (which records the hashes)."""
    def kmodel(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "kmodel", *args], capture_output=True,
                              text=True, timeout=300)

    new = project / "model_specs" / "new"
    shutil.copytree(project / "model_specs" / "mlp", new,
                    ignore=shutil.ignore_patterns("weights", "example"))
    text = (new / "model.yaml").read_text().replace("name: mlp", "name: new")
    text = re.sub(r"test:\n(  .*\n)+", "", text)
    (new / "model.yaml").write_text(re.sub(r"weights:\n(  .*\n)+",
                                           "weights: {path: weights, sha256: {}}\n", text))
    assert kmodel("validate", str(new)).returncode == 0
    assert kmodel("data", "breast_cancer", "--train", "tr.h5", "--test", "te.h5").returncode == 0
    res = kmodel("predict", "new", "-i", "te.h5", "-o", "p.h5")
    assert res.returncode == 1 and res.stderr.startswith("Error [KM303]: the weights of model "
                                                         "'new' are not hashed yet"), res.stderr
    res = kmodel("train", "new", "-i", "tr.h5", "-o", str(new / "weights"))
    assert res.returncode == 0 and "recorded their sha256" in res.stdout, res.stderr
    assert kmodel("predict", "new", "-i", "te.h5", "-o", "p.h5").returncode == 0
    assert kmodel("hash", "new").returncode == 0  # the spec lists exactly the files

    # weights put in place by hand, `sha256: {}`, then the one command that records them
    spec = (new / "model.yaml").read_text()
    (new / "model.yaml").write_text(re.sub(r"weights:\n(  .*\n)+",
                                           "weights: {path: weights, sha256: {}}\n", spec))
    assert kmodel("hash", "new", "--write").returncode == 0
    assert kmodel("predict", "new", "-i", "te.h5", "-o", "q.h5").returncode == 0


def test_progress_lines_when_stderr_is_not_a_terminal(project: Path) -> None:
    """A cluster job's log shows long work moving: rows done and a rate, every few seconds
    (KMODEL_PROGRESS_SECONDS; 0.2 here), instead of nothing until the end."""
    spec = project / "model_specs" / "toy" / "model.yaml"
    spec.write_text(spec.read_text().replace("  factor: 2.0\n", "  factor: 2.0\n  sleep: 0.05\n"))
    make_input(project / "in.h5", rows=3000)
    res = subprocess.run([sys.executable, "-m", "kmodel", "predict", "toy", "-i", "in.h5",
                          "-o", "out.h5", "--batch-size", "100"], capture_output=True, text=True,
                         env={**os.environ, "KMODEL_PROGRESS_SECONDS": "0.2"}, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("kmodel: toy: ")]
    assert len(lines) >= 3, res.stderr
    done = [int(re.search(r"toy: ([\d,]+) of 3,000 rows", ln)[1].replace(",", ""))
            for ln in lines]
    assert done == sorted(done) and all(ln.endswith(" rows/s") for ln in lines), lines


def test_kmodel_init_writes_a_model_that_trains_and_predicts(project: Path) -> None:
    def kmodel(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "kmodel", *args], capture_output=True,
                              text=True, timeout=300)

    res = kmodel("init", "mine", "--env", "numpy2", "--inputs", "x:float32:3")
    assert res.returncode == 0, res.stderr
    assert "kmodel train mine -i TRAIN.h5 -o model_specs/mine/weights" in res.stdout
    assert kmodel("validate", "model_specs/mine").returncode == 0
    x = make_input(project / "tr.h5", rows=300, targets=np.arange(300) % 2)
    y = (x[:, 0] > 0).astype(np.int64)
    with h5py.File(project / "tr.h5", "a") as f:
        f["targets/y"][...] = y
    untrained = kmodel("predict", "mine", "-i", "tr.h5", "-o", "p.h5")
    assert untrained.returncode == 1 and "mine has no weights yet: kmodel train mine" \
        in untrained.stderr
    assert kmodel("train", "mine", "-i", "tr.h5", "-o", "model_specs/mine/weights"
                  ).returncode == 0
    assert kmodel("predict", "mine", "-i", "tr.h5", "-o", "p.h5").returncode == 0
    with h5py.File(project / "p.h5") as f:
        assert np.mean((f["preds/proba"][()] > 0.5) == y) > 0.95
    again = kmodel("init", "mine", "--env", "numpy2")
    assert again.returncode == 1 and again.stderr.startswith("Error [KM402]: ")
    assert (project / "model_specs/mine/weights/params.json").is_file()  # nothing replaced
