"""The demo on a real SLURM cluster (tests/slurm/up.sh: two nodes on this host), through the
shipped profile: `kmodel run workflows/demo.yaml --profile slurm`. Its results must equal
a local run's. Env builds stay on the submitting host (one shared KMODEL_HOME); compute
jobs only find the built envs. Skipped, with the reason, where SLURM cannot be started.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.slurm]
REPO = Path(__file__).resolve().parents[1]
KMODEL = [sys.executable, "-m", "kmodel"]


@pytest.fixture(scope="module")
def cluster() -> None:
    if shutil.which("sbatch") and subprocess.run(["sinfo", "-h"], capture_output=True,
                                                 timeout=10).returncode == 0:
        return
    res = subprocess.run(["bash", str(REPO / "tests" / "slurm" / "up.sh")], capture_output=True,
                         text=True, timeout=600)
    if res.returncode != 0:
        pytest.skip((res.stderr.strip().splitlines() or ["SLURM could not be started"])[-1])


def project(folder: Path) -> Path:
    """A copy of the repo's demo, cross-fitted on two folds (fewer jobs to submit)."""
    for name in ("envs", "model_specs", "workflows"):
        shutil.copytree(REPO / name, folder / name)
    demo = folder / "workflows" / "demo.yaml"
    demo.write_text(demo.read_text() + "stacking: {folds: 2}\n")
    return folder


def predictions(root: Path) -> dict[str, np.ndarray]:
    found = {}
    for path in sorted(root.rglob("*.h5")):
        with h5py.File(path, "r") as f:
            for group in ("preds", "metadata"):
                for name, ds in f.get(group, {}).items():
                    found[f"{path.relative_to(root)}:{group}/{name}"] = ds[()]
    return found


def run(folder: Path, *args: str, home: Path | None = None) -> tuple[float, str]:
    """Wall time and Snakemake's log of `kmodel run workflows/demo.yaml ARGS`."""
    t0 = time.perf_counter()
    env = {**os.environ, **({"KMODEL_HOME": str(home)} if home else {})}
    res = subprocess.run([*KMODEL, "run", "workflows/demo.yaml", *args], cwd=folder,
                         capture_output=True, text=True, timeout=900, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return time.perf_counter() - t0, res.stderr


def test_the_demo_on_slurm_equals_a_local_run_and_builds_envs_once(
        tmp_path: Path, kmodel_home: Path, cluster: None) -> None:
    """The demo run by SLURM jobs gives what a local run gives, bit for bit. Its KMODEL_HOME
    is fresh and shared: the env rule (a local job) builds each env once; the compute jobs
    find them built and only verify them."""
    local, slurm = project(tmp_path / "local"), project(tmp_path / "slurm")
    subprocess.run([*KMODEL, "env", "create", "logreg", "gnb", "mlp", "stacker"], cwd=local,
                   check=True, capture_output=True)  # the demo's envs (not deep.yaml's)
    local_s, _ = run(local, "--cores", "2")
    home = tmp_path / "shared-home"
    slurm_s, log = run(slurm, "--profile", "slurm", home=home)
    print(f"\ndemo wall time: local {local_s:.1f} s (envs built), SLURM {slurm_s:.1f} s "
          f"(envs built on the way) ({slurm_s / local_s:.1f}x)")
    a, b = predictions(local / "results/demo"), predictions(slurm / "results/demo")
    # data and folds (6 files), fold, out-of-fold and test predictions (12), the ensemble
    assert a.keys() == b.keys() and len(a) == 6 + 24 + 2
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert json.loads((local / "results/demo/scores.json").read_text()) == \
        json.loads((slurm / "results/demo/scores.json").read_text())
    submitted = [ln for ln in log.splitlines() if "has been submitted with SLURM jobid" in ln]
    for rule, jobs in (("fit_fold", 6), ("predict_fold", 6), ("oof", 3), ("fit_full", 3),
                       ("predict_test", 3)):  # a SLURM job per model and fold
        assert sum(f"rule_{rule}" in ln for ln in submitted) == jobs, (rule, submitted)
    assert sum("group_compose" in ln for ln in submitted) == 1  # the composer: one job

    logs = slurm / "results" / "demo" / "logs"
    built = [p.name for p in logs.glob("env_*.log") if "creating env" in p.read_text()]
    assert sorted(built) == ["env_numpy2.log", "env_sklearn-legacy.log"]
    jobs = [*logs.glob("predict_*.log"), *logs.glob("fit_*.log")]
    assert len(jobs) == 18  # 3 models: 2 folds fitted and predicted, refitted, test
    for job in jobs:
        assert "creating env" not in job.read_text(), job
    built_envs = [p.name.rsplit("-", 1)[0] for p in (home / "envs").iterdir() if p.is_symlink()]
    assert sorted(built_envs) == ["numpy2", "sklearn-legacy"]  # each once, in the shared home
