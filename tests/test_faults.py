"""Fault tests: SIGKILL real kmodel processes mid-way; reruns complete with identical output.

Each test starts the real CLI in a subprocess, waits until it is demonstrably half-way,
kills it with SIGKILL (or SIGINT for Ctrl-C) and checks what is left behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from kmodel.io import hdf5

from .conftest import make_input

pytestmark = pytest.mark.slow
KMODEL = [sys.executable, "-m", "kmodel"]


def slow_toy(project: Path, sleep: float) -> None:
    spec = project / "model_specs" / "toy" / "model.yaml"
    text = spec.read_text()
    spec.write_text(text.replace("factor: 2.0", f"factor: 2.0\n  sleep: {sleep}"))


def wait_for(predicate, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def rows_done(path: Path) -> int:
    try:  # the writer holds HDF5's file lock: peek without it (checkpointed every 0.5 s)
        with h5py.File(path, "r", locking=False) as f:
            return int(f.attrs.get(hdf5.ROWS_DONE, 0))
    except (OSError, KeyError):
        return 0


def datasets(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {"id": f["metadata/id"][()], **{k: v[()] for k, v in f["preds"].items()}}


def test_killed_predict_resumes_to_identical_output(project: Path) -> None:
    make_input(project / "in.h5", rows=3000)
    subprocess.run([*KMODEL, "env", "create", "toy"], check=True, capture_output=True)
    reference = project / "ref.h5"
    subprocess.run([*KMODEL, "predict", "toy", "-i", "in.h5", "-o", reference,
                    "--batch-size", "100"], check=True, capture_output=True)
    slow_toy(project, 0.05)  # 30 batches of 100 rows, 1.5 s: checkpoints every 0.5 s
    out = project / "out.h5"
    partial = project / "out.h5.partial"
    cmd = [*KMODEL, "predict", "toy", "-i", "in.h5", "-o", str(out), "--batch-size", "100"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for(lambda: rows_done(partial) > 0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(0.3)  # the runner dies with its host (PDEATHSIG)
    assert not out.exists() and partial.exists()
    assert 0 < rows_done(partial) < 3000  # killed mid-way, with a checkpoint to resume from

    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {partial.name}" in resumed.stderr or "resuming" in resumed.stderr
    assert not partial.exists()
    a, b = datasets(reference), datasets(out)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_partial_from_another_input(project: Path) -> None:
    make_input(project / "in.h5", rows=3000)
    slow_toy(project, 0.05)
    partial = project / "out.h5.partial"
    cmd = [*KMODEL, "predict", "toy", "-i", "in.h5", "-o", "out.h5", "--batch-size", "100"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: rows_done(partial) > 0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(0.3)
    make_input(project / "in.h5", rows=1000, seed=1)  # a different input, same name
    res = subprocess.run([*cmd, "--resume"], capture_output=True, text=True)
    assert res.returncode == 1
    assert "Error [KM403]" in res.stderr and "different input" in res.stderr
    assert not (project / "out.h5").exists()


def test_ctrl_c_exits_130_and_removes_temporary_files(project: Path) -> None:
    make_input(project / "in.h5", rows=3000)
    slow_toy(project, 0.05)
    partial = project / "out.h5.partial"
    proc = subprocess.Popen([*KMODEL, "predict", "toy", "-i", "in.h5", "-o", "out.h5",
                             "--batch-size", "100"], stderr=subprocess.PIPE, text=True)
    wait_for(lambda: rows_done(partial) > 0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "Error [KM800]" in err
    assert not partial.exists() and not (project / "out.h5").exists()


def test_a_second_writer_of_the_same_output_is_refused(project: Path) -> None:
    make_input(project / "in.h5", rows=3000)
    slow_toy(project, 0.05)
    cmd = [*KMODEL, "predict", "toy", "-i", "in.h5", "-o", "out.h5", "--batch-size", "100"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: rows_done(project / "out.h5.partial") > 0)
    second = subprocess.run(cmd, capture_output=True, text=True)
    assert second.returncode == 1
    assert "Error [KM402]" in second.stderr and "another process is writing it" in second.stderr
    _, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    with h5py.File(project / "out.h5") as f:
        assert len(f["preds/y"]) == 3000


def test_killed_env_create_is_rebuilt(project: Path) -> None:
    envs = project / "envs"
    (envs / "fresh.yaml").write_text('python: "3.11"\npip:\n  - numpy>=2.2\n  - six\n')
    subprocess.run([*KMODEL, "env", "lock", "fresh"], check=True, capture_output=True)
    home = Path(os.environ["KMODEL_HOME"]) / "envs"
    before = set(home.glob("fresh-*"))
    proc = subprocess.Popen([*KMODEL, "env", "create", "fresh"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_for(lambda: any((p / "bin" / "python").exists() for p in home.glob("fresh-*")
                         if p.is_dir() and p not in before), timeout=60)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    res = subprocess.run([*KMODEL, "env", "create", "fresh"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    prefix = Path(res.stdout.split(": ", 1)[1].strip())
    check = subprocess.run([prefix / "bin" / "python", "-c", "import six, numpy, h5py"],
                           capture_output=True)
    assert check.returncode == 0


def test_killed_compose_train_leaves_nothing_and_rerun_matches(project: Path) -> None:
    rng = np.random.default_rng(0)
    n = 300
    ids = [f"s{i}" for i in range(n)]
    y = rng.integers(0, 2, n)
    hdf5.write_table(project / "t.h5", {"targets": {"y": y}}, ids)
    for k in range(3):
        p = np.clip(0.6 * y + rng.uniform(0, 0.4, n), 0.01, 0.99).astype(np.float32)
        hdf5.write_table(project / f"p{k}.h5", {"preds": {"proba": p}}, ids)
    code = project / "model_specs" / "stacker" / "model.py"
    code.write_text(code.read_text().replace(
        '        """Newton\'s method (IRLS) on [1, logit(x)]."""',
        '        """Newton\'s method (IRLS) on [1, logit(x)]."""\n'
        '        import os, time\n        if os.environ.get("SLOW_FIT"):\n'
        '            open("fitting", "w").close()\n            time.sleep(30)'))
    cmd = [*KMODEL, "compose", "train", "stacker", "p0.h5", "p1.h5", "p2.h5", "--targets",
           "t.h5", "-o", "w"]
    proc = subprocess.Popen(cmd, env={**os.environ, "SLOW_FIT": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: (project / "fitting").exists())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (project / "w").exists()
    subprocess.run(cmd, check=True, capture_output=True)
    first = json.loads((project / "w" / "hashes.json").read_text())
    subprocess.run([*cmd[:-1], "w2"], check=True, capture_output=True)
    assert json.loads((project / "w2" / "hashes.json").read_text()) == first
