"""`kmodel run` recovers: kill it (SIGKILL or SIGTERM) at each stage of a real Snakemake
run, check that no job process outlives it, then rerun plainly: the rerun completes and its
outputs equal a clean run's, bit for bit. Also: config paths are quoted in every shell
command, and Snakemake failures are reported by their cause.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from kmodel.workflow import _failure

from .conftest import SMALL_COMPOSITION, wait_for

pytestmark = pytest.mark.slow
KMODEL = [sys.executable, "-m", "kmodel"]

def outputs(root: Path) -> dict[str, object]:
    """Every dataset of every prediction file, the ensembler's weights and the scores."""
    found: dict[str, object] = {}
    for path in sorted(root.rglob("*.h5")):
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, obj, p=path: found.__setitem__(
                f"{p.relative_to(root)}:{name}", obj[()]) if isinstance(obj, h5py.Dataset)
                else None)
    for path in sorted((root / "ensembler").rglob("*.npy")):
        found[str(path.relative_to(root))] = np.load(path)
    found["scores"] = json.loads((root / "scores.json").read_text())
    return found


def assert_same(a: dict[str, object], b: dict[str, object]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], np.ndarray):
            assert np.array_equal(a[key], b[key]), key  # type: ignore[arg-type]
        else:
            assert a[key] == b[key], key


def processes_in(folder: Path) -> list[str]:
    """Command lines of live processes working in ``folder`` (jobs, runners, Snakemake)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "cwd") == str(folder):
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def clean_run(small_composition_run: Path) -> dict[str, object]:
    """The outputs of an uninterrupted run of the same composition (made once a session)."""
    return outputs(small_composition_run / "out" / "small")


def _project(folder: Path, results: str = "out") -> None:
    repo = Path(__file__).resolve().parents[1]
    for name in ("envs", "model_specs"):
        subprocess.run(["cp", "-r", str(repo / name), str(folder / name)], check=True)
    (folder / "c.yaml").write_text(SMALL_COMPOSITION.replace("results: out",
                                                             f"results: {json.dumps(results)}"))


# the moment to kill: when this job's log appears (the job has started)
STAGES = {
    "data": "data.log",
    "fit": "fit_logreg_fold0.log",
    "predict": "predict_logreg_test.log",
    "compose_train": "compose_train.log",
    "score": "score.log",
}
CASES = [("data", signal.SIGKILL), ("fit", signal.SIGKILL), ("predict", signal.SIGKILL),
         ("compose_train", signal.SIGKILL), ("score", signal.SIGKILL),
         ("fit", signal.SIGTERM), ("compose_train", signal.SIGTERM)]


@pytest.mark.parametrize(("stage", "sig"), CASES,
                         ids=[f"{s}-{signal.Signals(g).name}" for s, g in CASES])
def test_killed_run_leaves_no_process_and_a_plain_rerun_matches_a_clean_run(
        tmp_path: Path, kmodel_home: Path, clean_run: dict[str, object], stage: str,
        sig: int) -> None:
    _project(tmp_path)
    proc = subprocess.Popen([*KMODEL, "run", "c.yaml", "--cores", "2"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "out" / "small" / "logs" / STAGES[stage]
    wait_for(log.exists)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=180)
    if sig == signal.SIGTERM:
        assert proc.returncode == 143, err
        assert err.strip().splitlines()[-1].startswith("Error [KM800]: interrupted by SIGTERM")
    wait_for(lambda: not processes_in(tmp_path), timeout=180)  # nothing left behind

    rerun = subprocess.run([*KMODEL, "run", "c.yaml", "--cores", "2"], cwd=tmp_path,
                           capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_same(clean_run, outputs(tmp_path / "out" / "small"))
    leftovers = [p for p in (tmp_path / "out").rglob("*") if ".partial" in p.name
                 or p.name.endswith(".lock") or ".tmp-" in p.name]
    assert leftovers == []


def test_a_stale_snakemake_lock_is_removed_when_no_snakemake_runs(
        tmp_path: Path, kmodel_home: Path, clean_run: dict[str, object]) -> None:
    _project(tmp_path)
    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.output.lock").write_text(str(tmp_path / "out" / "small" / "scores.json"))
    res = subprocess.run([*KMODEL, "run", "c.yaml", "--cores", "2"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "removing Snakemake's lock left by a killed run" in res.stderr
    assert_same(clean_run, outputs(tmp_path / "out" / "small"))


def test_paths_with_spaces_and_shell_metacharacters_are_quoted(
        tmp_path: Path, kmodel_home: Path, clean_run: dict[str, object]) -> None:
    results = "-rf my results||touch pwned||$(touch pwned2);x"  # '-': not read as an option
    _project(tmp_path, results)
    res = subprocess.run([*KMODEL, "run", "c.yaml", "--cores", "2"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert not list(tmp_path.rglob("pwned*"))
    assert_same(clean_run, outputs(tmp_path / results / "small"))


def test_a_lock_held_by_another_snakemake_is_named_with_its_fix() -> None:
    lines = ["Building DAG of jobs...", "LockException:",
             "Error: Directory cannot be locked. Please make sure that no other Snakemake "
             "process is trying to create the same files in the following directory:", "/x"]
    message = str(_failure(lines, 1))
    assert "held by another Snakemake run" in message and "--unlock" in message


def test_an_unknown_snakemake_failure_names_the_exception_not_a_file() -> None:
    lines = ["Building DAG of jobs...", "MissingInputException in rule predict in file "
             "/w/Snakefile, line 72:", "Missing input files for rule predict:",
             "    affected files:", "        results/demo/envs/numpy2.json"]
    message = str(_failure(lines, 1))
    assert message.startswith("Snakemake failed: MissingInputException: Missing input files "
                              "for rule predict"), message
