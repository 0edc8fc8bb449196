"""A model whose env is a conda env predicts, composes and runs in the Snakemake workflow
exactly like a model in a uv env.

The conda env ``condanp`` (python repackaged from the host into a local channel, numpy and
h5py from its pip: section) is locked once per session; every test copies the spec and its
lockfile into its own project, so the env key (the lockfile's sha256) is the same and the
env is built once in the session's KMODEL_HOME, next to the shared uv envs.
"""

from __future__ import annotations

import json
import platform
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from kmodel import workflow
from kmodel.cli import cli
from kmodel.envs import backend_for
from kmodel.envs.conda import CondaBackend, current_platform
from kmodel.io import hdf5
from kmodel.predict import predict
from kmodel.registry import Registry
from kmodel.weights import write_hashes

from .conda_channel import PY_MM
from .conftest import make_input

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(current_platform() != "linux-64",
                       reason="the test channel repackages a linux-64 python"),
]

ENV = "condanp"


def conda_spec(channel: Path) -> str:
    return (f"description: numpy 2 in a conda env (python {PY_MM} from a local channel)\n"
            f"channels: [{channel.as_uri()}]\n"
            "dependencies:\n"
            f"  - python={PY_MM}\n"
            "  - pip\n"
            "  - pip:\n"
            "    - numpy>=2.2\n"
            "    - h5py\n")


@pytest.fixture(scope="session")
def conda_lock(tmp_path_factory: pytest.TempPathFactory, kmodel_home: Path,
               conda_channel: Path) -> Path:
    """envs/condanp.yaml and its lockfile, written once (the env builds in kmodel_home)."""
    channel = conda_channel
    envs = tmp_path_factory.mktemp("conda-envs") / "envs"
    envs.mkdir()
    (envs / f"{ENV}.yaml").write_text(conda_spec(channel))
    ref = Registry(envs=[envs]).env(ENV)
    assert isinstance(backend_for(ref), CondaBackend)
    CondaBackend().lock(ref)
    return envs


@pytest.fixture
def conda_project(project: Path, conda_lock: Path) -> Path:
    """The usual test project plus envs/condanp.yaml and its lock."""
    for name in (f"{ENV}.yaml", f"{ENV}.conda-lock.yml"):
        shutil.copy2(conda_lock / name, project / "envs" / name)
    return project


def conda_copy(project: Path, model: str, new: str) -> None:
    """Copy model_specs/MODEL as NEW in the conda env, with its weight hashes rewritten."""
    src, dst = project / "model_specs" / model, project / "model_specs" / new
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    spec = dst / "model.yaml"
    lines = spec.read_text().splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith("name:"):
            lines[i] = f"name: {new}\n"
        elif line.startswith("env:"):
            lines[i] = f"env: {ENV}\n"
    spec.write_text("".join(lines))
    m = Registry().model(new)
    assert m.spec.env == ENV
    if m.spec.weights:
        write_hashes(m)


def test_predict_in_conda_env_matches_uv(conda_project: Path) -> None:
    conda_copy(conda_project, "toy", "toyconda")
    reg = Registry()
    assert backend_for(reg.env_of(reg.model("toy"))).name in ("uv", "venv")
    conda_ref = reg.env_of(reg.model("toyconda"))
    assert backend_for(conda_ref).name == "conda"

    make_input(conda_project / "in.h5", rows=500)
    uv_out = predict(reg, "toy", conda_project / "in.h5", conda_project / "uv.h5",
                     batch_size=64)
    conda_out = predict(reg, "toyconda", conda_project / "in.h5", conda_project / "conda.h5",
                        batch_size=64)

    # the conda env really is a conda env (rattler-installed), not another venv
    prefix = CondaBackend().status(conda_ref).prefix
    assert prefix is not None and (prefix / "conda-meta").is_dir()
    assert not (prefix / "pyvenv.cfg").exists()

    uv_preds, uv_ids = hdf5.read_group(uv_out, "preds")
    conda_preds, conda_ids = hdf5.read_group(conda_out, "preds")
    assert list(uv_ids) == list(conda_ids)
    uv_attrs, conda_attrs = hdf5.read_attrs(uv_out), hdf5.read_attrs(conda_out)
    assert set(uv_preds) == set(conda_preds) == {"y", "norm"}
    print(f"numpy: uv env {uv_attrs['env_numpy_version']}, "
          f"conda env {conda_attrs['env_numpy_version']}")
    for name in uv_preds:
        assert uv_preds[name].dtype == conda_preds[name].dtype
        if uv_attrs["env_numpy_version"] == conda_attrs["env_numpy_version"]:
            assert np.array_equal(uv_preds[name], conda_preds[name]), name
        else:  # different numpy builds may round differently
            np.testing.assert_allclose(conda_preds[name], uv_preds[name], rtol=1e-6)

    assert conda_attrs["env_python_version"] == platform.python_version()
    assert conda_attrs["env_numpy_version"].startswith("2.")
    assert conda_attrs["model"] == "toyconda"
    assert conda_attrs["lock_sha256"] != uv_attrs["lock_sha256"]
    assert conda_attrs["env_key"] != uv_attrs["env_key"]
    with h5py.File(conda_out) as f:
        assert f["preds/y"].chunks == (500,)  # 64-row batches of 4 bytes share one chunk


def test_snakemake_workflow_with_a_conda_model(conda_project: Path) -> None:
    conda_copy(conda_project, "mlp", "mlpconda")
    config = conda_project / "conda.yaml"
    config.write_text("name: condademo\n"
                      "results: results\n"
                      "data:\n"
                      "  builtin: breast_cancer\n"
                      "  seed: 0\n"
                      "  test_fraction: 0.3\n"
                      "targets: y\n"
                      "models: [mlp, mlpconda]\n"
                      "ensembler: stacker\n"
                      "stacking: {method: in-sample}\n"  # both with the shipped weights
                      "batch_size: 64\n")
    first: list[str] = []
    plan = workflow.run(config, Registry(), cores=2, echo=first.append).plan
    assert plan.scores.is_file(), "\n".join(first[-40:])
    doc = workflow.read_scores(plan)
    assert doc is not None
    scores = doc["scores"]
    assert set(scores) == {"mlp", "mlpconda", "ensemble", "average"}
    # same weights, same code: the conda env scores exactly like the uv one
    assert scores["mlp"] == scores["mlpconda"]
    assert 0.9 < scores["mlpconda"]["roc_auc"] <= 1.0
    for split in ("train", "test"):
        a, _ = hdf5.read_group(plan.preds("mlp", split), "preds")
        b, _ = hdf5.read_group(plan.preds("mlpconda", split), "preds")
        np.testing.assert_allclose(b["proba"], a["proba"], rtol=1e-6)
    record = json.loads(plan.env_record(ENV).read_text())
    assert record["env"] == ENV and Path(record["prefix"], "conda-meta").is_dir()

    again: list[str] = []
    workflow.run(config, Registry(), cores=2, echo=again.append)
    text = "\n".join(again)
    assert "Nothing to be done" in text, text
    assert "rule predict" not in text and "localrule" not in text


def test_env_status_reports_conda_env_and_its_drift(conda_project: Path) -> None:
    # only numpy2 (uv) and condanp here, so every env is locked and built
    for stale in (conda_project / "envs").glob("sklearn-legacy.*"):
        stale.unlink()
    reg = Registry()
    for name in reg.env_names():
        ref = reg.env(name)
        backend_for(ref).ensure(ref)

    runner = CliRunner()
    ok = runner.invoke(cli, ["env", "status", "--json"])
    assert ok.exit_code == 0, ok.output
    rows = {r["env"]: r for r in json.loads(ok.stdout)}
    assert set(rows) == {"numpy2", ENV}
    row = rows[ENV]
    assert row["backend"] == "conda"
    assert row["locked"] and row["built"] and not row["drift"] and not row["stale"]
    assert Path(row["prefix"], "conda-meta").is_dir()

    spec = conda_project / "envs" / f"{ENV}.yaml"
    spec.write_text(spec.read_text().replace("    - h5py\n", "    - h5py\n    - pyyaml\n"))
    drifted = runner.invoke(cli, ["env", "status", "--json"])
    assert drifted.exit_code == 1, drifted.output
    rows = {r["env"]: r for r in json.loads(drifted.stdout)}
    assert rows[ENV]["locked"] and rows[ENV]["drift"] and rows[ENV]["stale"]
    assert not rows["numpy2"]["stale"]
    text = runner.invoke(cli, ["env", "status"])
    assert text.exit_code == 1
    assert "spec changed since lock" in text.output
