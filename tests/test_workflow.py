"""A real Snakemake run of a small composition: results, no-op rerun, targeted reruns."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from kmodel.cli import cli
from kmodel.errors import WorkflowError
from kmodel.registry import Registry
from kmodel.workflow import run

from .conftest import SMALL_COMPOSITION

pytestmark = pytest.mark.slow

CONFIG = SMALL_COMPOSITION


def jobs(output: str) -> list[str]:
    """Rule names of the jobs that ran, from kmodel run's lines: `[3/9] predict mlp (1.2 s)`."""
    return [m[1] for m in re.finditer(r"^\[\d+/\d+\] (\S+)", output, re.M) if m[1] != "all"]


CROSS_FIT = ["fit_fold", "fit_fold", "predict_fold", "predict_fold", "oof", "fit_full",
             "predict_test"]  # one model, two folds


def test_composition_end_to_end_then_incremental(project: Path) -> None:
    (project / "c.yaml").write_text(CONFIG)
    first = CliRunner().invoke(cli, ["run", "c.yaml", "--cores", "2"])
    assert first.exit_code == 0, first.output
    # each model fitted per fold, its out-of-fold predictions gathered, refitted whole
    assert sorted(jobs(first.output)) == sorted(
        ["data", "env", "env", "folds", *CROSS_FIT, *CROSS_FIT, "compose_train",
         "compose_predict", "score"])
    scores = json.loads((project / "out/small/scores.json").read_text())["scores"]
    assert set(scores) == {"logreg", "mlp", "ensemble", "average"}
    assert scores["ensemble"]["roc_auc"] > 0.95
    assert "ensemble" in first.output and "log_loss" in first.output
    assert "results in out/small/" in first.output

    second = CliRunner().invoke(cli, ["run", "c.yaml", "--cores", "2"])
    assert second.exit_code == 0 and jobs(second.output) == []
    assert "Nothing to be done" in second.output

    # one model's code changed: its fits and predictions and the composer rerun, no more
    code = project / "model_specs/mlp/model.py"
    code.write_text(code.read_text() + "\n# reviewed\n")
    third = CliRunner().invoke(cli, ["run", "c.yaml", "--cores", "2"])
    assert third.exit_code == 0, third.output
    assert sorted(jobs(third.output)) == sorted([*CROSS_FIT, "compose_predict",
                                                 "compose_train", "score"])
    assert "] fit_full mlp (" in third.output and not re.search(
        r"^\[\d+/\d+\] \S+ logreg", third.output, re.M)

    # a spec change (here its documentation) of the other model: the same for it
    spec = project / "model_specs/logreg/model.yaml"
    spec.write_text(spec.read_text().replace("description: ", "description: Tuned. "))
    fourth = CliRunner().invoke(cli, ["run", "c.yaml", "--cores", "2"])
    assert fourth.exit_code == 0, fourth.output
    assert sorted(jobs(fourth.output)) == sorted([*CROSS_FIT, "compose_predict",
                                                  "compose_train", "score"])
    assert "] fit_full logreg (" in fourth.output and not re.search(
        r"^\[\d+/\d+\] \S+ mlp", fourth.output, re.M)


def test_plain_snakemake_does_the_same_job(project: Path) -> None:
    (project / "c.yaml").write_text(CONFIG.replace("[logreg, mlp]", "[mlp]"))
    snakefile = Path(__file__).parents[1] / "workflows" / "Snakefile"
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(snakefile),
                           "--configfile", "c.yaml", "--cores", "2"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert set(json.loads((project / "out/small/scores.json").read_text())["scores"]) == {
        "mlp", "ensemble"}


def test_failed_rule_is_named_with_its_log(project: Path) -> None:
    code = project / "model_specs/mlp/model.py"
    broken = "    def predict(self, x):\n        raise OSError('disk on fire')\n"
    code.write_text(code.read_text().replace("    def predict(self, x):\n", broken))
    (project / "c.yaml").write_text(CONFIG.replace("[logreg, mlp]", "[mlp]"))
    with pytest.raises(WorkflowError) as err:
        run(project / "c.yaml", Registry(), cores=1)
    message = str(err.value)
    assert err.value.code == "KM700"
    # (a fold's fit predicts too: its weights, reloaded, must reproduce the trained model)
    assert re.search(r"rule '(predict_(fold|test)|fit_(fold|full))'; see its log "
                     r"out/small/logs/(predict|fit)_mlp_(fold\d|test|full)\.log", message), \
        message
    assert "Error [KM500]: model 'mlp' raised OSError: disk on fire" in message
    assert not (project / "out/small/preds/mlp/train.h5").exists()


def test_a_folder_on_the_search_path_carries_its_models_envs(project: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """KMODEL_PATH=ROOT: ROOT/<model>/ and ROOT/envs/; its models find their env there
    first, `kmodel ls` says where each model comes from and which names are hidden."""
    root = tmp_path.with_name(f"{tmp_path.name}-shared")
    shutil.copytree(project / "model_specs" / "mlp", root / "mlp2")
    spec = root / "mlp2" / "model.yaml"
    spec.write_text(spec.read_text().replace("name: mlp", "name: mlp2")
                    .replace("env: numpy2", "env: carried"))
    shutil.copytree(project / "model_specs" / "gnb", root / "gnb")  # hides ./model_specs/gnb
    (root / "envs").mkdir()
    (root / "envs" / "carried.yaml").write_text((project / "envs" / "numpy2.yaml").read_text())
    (root / "envs" / "carried.lock").write_text((project / "envs" / "numpy2.lock").read_text())
    monkeypatch.setenv("KMODEL_PATH", str(root))
    listing = CliRunner().invoke(cli, ["ls"])
    assert listing.exit_code == 0, listing.output
    rows = {ln.split()[0]: ln.split()[3] for ln in listing.stdout.splitlines()}
    assert rows["mlp2"] == rows["gnb"] == str(root) and rows["mlp"] == "model_specs"
    assert f"gnb in model_specs is hidden by {root / 'gnb'}" in listing.stderr
    assert Registry().env_of(Registry().model("mlp2")).path == root / "envs" / "carried.yaml"
    (project / "c.yaml").write_text(CONFIG.replace("[logreg, mlp]", "[mlp2]"))
    res = CliRunner().invoke(cli, ["run", "c.yaml", "--cores", "2"])
    assert res.exit_code == 0, res.output
    scores = json.loads((project / "out/small/scores.json").read_text())["scores"]
    assert set(scores) == {"mlp2", "ensemble"}
