"""kmodel's Snakefile as a module of a user's own pipeline, in another folder, with the
composition (and where its models and envs live) passed as the module's config; and the
Snakefile and profiles found in an installed wheel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from kmodel.workflow import snakefile

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]

USER_SNAKEFILE = """\
configfile: "config.yaml"


rule all:
    input:
        "report.txt",


module kmodel:
    snakefile:
        {snakefile!r}
    config:
        config["kmodel"]


use rule * from kmodel exclude all as kmodel_*


rule report:
    input:
        scores="kmodel-results/small/scores.json",
        ensemble="kmodel-results/small/ensemble/test.h5",
    output:
        "report.txt",
    shell:
        "{python} -c 'import json, sys; "
        "print(json.load(open(sys.argv[1]))[\\"scores\\"][\\"ensemble\\"][\\"roc_auc\\"])'"
        " {{input.scores:q}} > {{output:q}}"
"""

CONFIG = """\
kmodel:
  name: small
  results: kmodel-results
  specs: [lib/model_specs]
  envs: lib/environments
  data: {builtin: breast_cancer}
  models: [logreg, mlp]
  ensembler: stacker
  stacking: {folds: 2}
  batch_size: 64
"""


def test_a_user_pipeline_uses_kmodel_as_a_module(tmp_path: Path, kmodel_home: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(REPO / "model_specs", tmp_path / "lib" / "model_specs")
    shutil.copytree(REPO / "envs", tmp_path / "lib" / "environments")
    (tmp_path / "config.yaml").write_text(CONFIG)
    (tmp_path / "Snakefile").write_text(USER_SNAKEFILE.format(
        snakefile=str(snakefile()), python=sys.executable))
    for var in ("KMODEL_PATH", "KMODEL_ENVS"):  # found through the config only
        monkeypatch.delenv(var, raising=False)
    res = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    auc = float((tmp_path / "report.txt").read_text())
    scores = json.loads((tmp_path / "kmodel-results/small/scores.json").read_text())["scores"]
    assert auc == scores["ensemble"]["roc_auc"] > 0.95
    assert "localrule kmodel_env:" in res.stderr  # env builds stay on the submitting host
    again = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2"], cwd=tmp_path,
                           capture_output=True, text=True)
    assert again.returncode == 0 and "Nothing to be done" in again.stderr


def test_the_wheel_ships_the_snakefile_and_profiles(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w",
                    str(tmp_path / "dist"), str(REPO)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("kmodel_ensembles-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "kmodel/_workflows/Snakefile" in names
    assert "kmodel/_workflows/profiles/slurm/config.yaml" in names
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)  # an install of the wheel's files
    res = subprocess.run([sys.executable, "-c", "from kmodel.cli import main; main()",
                          "snakefile"], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    assert Path(res.stdout.strip()) == target / "kmodel" / "_workflows" / "Snakefile"


def test_the_snakefile_is_formatted_and_lints_clean(tmp_path: Path) -> None:
    """snakefmt's style, and Snakemake's linter has one remark only: no conda or container
    directive per rule, which is deliberate (each job runs kmodel, which activates the
    model's own locked env)."""
    fmt = subprocess.run([sys.executable, "-m", "snakefmt", "--check", str(snakefile())],
                         capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stderr[-2000:]
    lint = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(snakefile()),
                           "--configfile", str(REPO / "workflows" / "demo.yaml"), "--lint"],
                          cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "KMODEL_PATH": str(REPO / "model_specs"),
                               "KMODEL_ENVS": str(REPO / "envs")})
    remarks = {line.strip() for line in (lint.stdout + lint.stderr).splitlines()
               if line.startswith("    * ")}
    assert remarks == {"* Specify a conda environment or container for each rule.:"}, \
        lint.stderr[-3000:]
