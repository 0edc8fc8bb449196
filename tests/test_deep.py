"""The framework models of workflows/deep.yaml in their real envs (torch CPU, Keras 3 on JAX,
LightGBM): their shipped native weights pass `kmodel test`, and a small composition of them
is cross-fitted (each fit saved with the model's own save(), reloaded and checked), stacked
and scored by a real `kmodel run`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from kmodel.cli import cli

from .conftest import DEEP_MODELS, make_project

pytestmark = pytest.mark.slow

DEEP = DEEP_MODELS
NATIVE = {"torch-mlp": "torch-mlp.safetensors", "keras-mlp": "keras-mlp.weights.h5",
          "lgbm": "lgbm.txt"}

COMPOSITION = """\
name: deep-small
results: out
data:
  builtin: breast_cancer
models: [torch-mlp, keras-mlp, lgbm]
ensembler: stacker
stacking: {folds: 2}
batch_size: 64
"""


@pytest.fixture
def project(tmp_path: Path, kmodel_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """conftest's project, with the framework models and their envs."""
    monkeypatch.delenv("KMODEL_PATH", raising=False)
    monkeypatch.delenv("KMODEL_ENVS", raising=False)
    make_project(tmp_path, deep=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_framework_models_pass_their_example_tests(project: Path) -> None:
    for name in DEEP:  # shipped as the framework's own files, each hashed in the spec
        folder = project / "model_specs" / name / "weights"
        assert NATIVE[name] in {p.name for p in folder.iterdir()}
        assert not list(folder.glob("*.npy"))
    res = CliRunner().invoke(cli, ["test", *DEEP])
    assert res.exit_code == 0, res.output
    for name in DEEP:
        assert name in res.output

    # a tampered native file is refused before any prediction (its sha256 is the spec's)
    weights = project / "model_specs/lgbm/weights/lgbm.txt"
    weights.write_text(weights.read_text() + "\n")
    res = CliRunner().invoke(cli, ["test", "lgbm"])
    assert res.exit_code != 0 and "lgbm.txt" in res.output


def test_small_composition_of_the_frameworks(project: Path) -> None:
    (project / "c.yaml").write_text(COMPOSITION)
    res = CliRunner().invoke(cli, ["run", "c.yaml", "--cores", "2"])
    assert res.exit_code == 0, res.output
    scores = json.loads((project / "out/deep-small/scores.json").read_text())["scores"]
    assert set(scores) == {*DEEP, "ensemble", "average"}
    for name in [*DEEP, "ensemble"]:
        assert scores[name]["roc_auc"] > 0.95, (name, scores[name])
