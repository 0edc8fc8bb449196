"""Fault tests: SIGKILL real kmodel processes mid-way; reruns complete with identical output.

Each test starts the real CLI in a subprocess, waits until it is demonstrably half-way
(the toy model parks there and says so: nothing depends on the machine's speed), kills it
with SIGKILL (or SIGINT for Ctrl-C) and checks what is left behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from kmodel.io import hdf5

from .conftest import make_input, wait_for

pytestmark = pytest.mark.slow
KMODEL = [sys.executable, "-m", "kmodel"]


def gated_toy(project: Path) -> None:
    """The toy model, slowed (0.05 s a batch), parks half-way through its first run until
    the test says go (see conftest's TOY_MODEL)."""
    spec = project / "model_specs" / "toy" / "model.yaml"
    text = spec.read_text()
    spec.write_text(text.replace("factor: 2.0", f"factor: 2.0\n  sleep: 0.05\n"
                                 f"  gate: {str(project)!r}"))


def go(project: Path) -> None:
    """Let the parked run go on."""
    (project / "go").touch()


def runner_of(proc: subprocess.Popen[str]) -> int:
    """The pid of the runner a kmodel process started (its child running runner.py)."""
    found: list[int] = []
    wait_for(lambda: found.extend(
        int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "runner.py"],
                                       capture_output=True, text=True).stdout.split()) or found)
    return found[0]


def gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaped counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] in "ZX"
    except OSError:
        return True


def rows_done(path: Path | None) -> int:
    if path is None:
        return 0
    try:  # the writer holds HDF5's file lock: peek without it (checkpointed every 0.5 s)
        with h5py.File(path, "r", locking=False) as f:
            return int(f.attrs.get(hdf5.ROWS_DONE, 0))
    except (OSError, KeyError):
        return 0


def working(output: Path) -> Path | None:
    """The file a running predict writes: OUT.partial-<run id>, unique to the run."""
    found = sorted(output.parent.glob(output.name + ".partial-*"))
    return found[0] if found else None


def datasets(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {"id": f["metadata/id"][()], **{k: v[()] for k, v in f["preds"].items()}}


def same_datasets(a: Path, b: Path) -> bool:
    x, y = datasets(a), datasets(b)
    return x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)


def start_predict(project: Path, out: str = "out.h5", model: str = "toy",
                  env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """A predict run, parked half-way (a checkpoint written) until ``go``."""
    cmd = [*KMODEL, "predict", model, "-i", "in.h5", "-o", out, "--batch-size", "100"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env)
    wait_for(lambda: (project / "parked").exists() or proc.poll() is not None)
    assert proc.poll() is None, proc.communicate()[1]
    assert rows_done(working(project / out)) > 0
    return proc


@pytest.fixture
def slow_run(project: Path) -> Path:
    """3000 input rows and a reference output; then the toy model gated (``gated_toy``)."""
    make_input(project / "in.h5", rows=3000)
    subprocess.run([*KMODEL, "env", "create", "toy"], check=True, capture_output=True)
    subprocess.run([*KMODEL, "predict", "toy", "-i", "in.h5", "-o", "ref.h5", "--batch-size",
                    "100"], check=True, capture_output=True)
    gated_toy(project)  # 30 batches of 100 rows; checkpoints every 0.5 s
    return project / "ref.h5"


RESUME = [*KMODEL, "predict", "toy", "-i", "in.h5", "-o", "out.h5", "--batch-size", "100",
          "--resume"]


def test_killed_predict_resumes_to_identical_output(project: Path, slow_run: Path) -> None:
    out, partial = project / "out.h5", project / "out.h5.partial"
    proc = start_predict(project)
    work, runner = working(out), runner_of(proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wait_for(lambda: gone(runner))  # the runner dies with its host (PDEATHSIG)
    assert not out.exists() and work is not None and work.exists()
    assert 0 < rows_done(work) < 3000  # killed mid-way, with a checkpoint to resume from

    resumed = subprocess.run(RESUME, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    assert not partial.exists() and working(out) is None
    assert not (project / "out.h5.lock").exists()
    assert same_datasets(slow_run, out)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_predict_keeps_its_partial_and_says_how_to_resume(
        project: Path, slow_run: Path, sig: int, code: int) -> None:
    out, partial = project / "out.h5", project / "out.h5.partial"
    proc = start_predict(project)
    runner = runner_of(proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error [KM800]: interrupted by "), err
    assert "rows kept in out.h5.partial" in err and "--resume" in err
    assert not out.exists() and partial.exists() and working(out) is None
    assert not (project / "out.h5.lock").exists()
    assert gone(runner)  # the runner was stopped (and reaped) by its host

    resumed = subprocess.run(RESUME, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert same_datasets(slow_run, out) and not partial.exists()


def test_a_plain_rerun_after_a_kill_starts_over_and_clears_the_partial(
        project: Path, slow_run: Path) -> None:
    out = project / "out.h5"
    proc = start_predict(project)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    res = subprocess.run(RESUME[:-1], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert same_datasets(slow_run, out)
    assert sorted(p.name for p in project.glob("out.h5*")) == ["out.h5"]


def test_resume_refuses_a_partial_from_another_input(project: Path, slow_run: Path) -> None:
    proc = start_predict(project)
    runner = runner_of(proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wait_for(lambda: gone(runner))
    make_input(project / "in.h5", rows=1000, seed=1)  # a different input, same name
    res = subprocess.run(RESUME, capture_output=True, text=True)
    assert res.returncode == 1
    assert "Error [KM403]" in res.stderr and "different input" in res.stderr
    assert not (project / "out.h5").exists()
    assert (project / "out.h5.partial").exists()  # refused, not deleted


def test_resume_detects_an_input_rewritten_with_the_same_size_and_mtime(
        project: Path, slow_run: Path) -> None:
    source = project / "in.h5"
    before = source.stat()
    proc = start_predict(project)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    data = bytearray(source.read_bytes())
    data[-1] ^= 0xFF  # same size; then the old mtime back: only the content changed
    source.write_bytes(bytes(data))
    os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
    res = subprocess.run(RESUME, capture_output=True, text=True)
    assert res.returncode == 1 and "Error [KM403]" in res.stderr, res.stderr
    assert not (project / "out.h5").exists()


def test_resume_accepts_a_copied_input_with_the_same_bytes(project: Path,
                                                           slow_run: Path) -> None:
    proc = start_predict(project)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    shutil.copy2(project / "in.h5", project / "copy.h5")
    os.replace(project / "copy.h5", project / "in.h5")  # new inode and ctime, same bytes
    res = subprocess.run(RESUME, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert same_datasets(slow_run, project / "out.h5")


@pytest.mark.parametrize("other", ["toy", "toy2"])
def test_a_second_writer_of_the_same_output_is_refused_without_hdf5_locking(
        project: Path, slow_run: Path, other: str) -> None:
    """Clusters set HDF5_USE_FILE_LOCKING=FALSE; kmodel's own lock still holds."""
    toy2 = project / "model_specs" / "toy2"
    shutil.copytree(project / "model_specs" / "toy", toy2)
    spec = toy2 / "model.yaml"
    spec.write_text(spec.read_text().replace("name: toy", "name: toy2")
                    .replace("factor: 2.0", "factor: -5.0"))
    env = {**os.environ, "HDF5_USE_FILE_LOCKING": "FALSE"}
    first = start_predict(project, env=env)
    second = subprocess.run([*KMODEL, "predict", other, "-i", "in.h5", "-o", "out.h5"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert second.returncode == 1
    assert second.stderr.startswith("Error [KM402]: cannot write output out.h5: another "
                                    "kmodel run (pid "), second.stderr
    go(project)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert same_datasets(slow_run, project / "out.h5")  # the first model's, untouched


def test_an_input_changed_while_predicting_is_refused(project: Path, slow_run: Path) -> None:
    proc = start_predict(project)
    make_input(project / "in2.h5", rows=3000, seed=5)
    os.replace(project / "in2.h5", project / "in.h5")
    go(project)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "Error [KM404]" in err and "changed while model 'toy' was predicting" in err
    assert sorted(p.name for p in project.glob("out.h5*")) == []


def test_killed_env_create_is_rebuilt(project: Path) -> None:
    envs = project / "envs"
    # a token of its own: a new env key even with a KMODEL_TEST_HOME kept between sessions
    (envs / "fresh.yaml").write_text(f'# {os.urandom(8).hex()}\npython: "3.11"\npip:\n'
                                     '  - numpy>=2.2\n  - six\n')
    subprocess.run([*KMODEL, "env", "lock", "fresh"], check=True, capture_output=True)
    home = Path(os.environ["KMODEL_HOME"]) / "envs"
    before = set(home.glob("fresh-*"))
    proc = subprocess.Popen([*KMODEL, "env", "create", "fresh"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_for(lambda: any((p / "bin" / "python").exists() for p in home.glob("fresh-*")
                         if p.is_dir() and p not in before), timeout=180)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    res = subprocess.run([*KMODEL, "env", "create", "fresh"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    prefix = Path(res.stdout.split(": ", 1)[1].strip())
    check = subprocess.run([prefix / "bin" / "python", "-c", "import six, numpy, h5py"],
                           capture_output=True)
    assert check.returncode == 0


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_compose_train_leaves_nothing_and_rerun_matches(project: Path, sig: int) -> None:
    rng = np.random.default_rng(0)
    n = 300
    ids = [f"s{i}" for i in range(n)]
    y = rng.integers(0, 2, n)
    hdf5.write_table(project / "t.h5", {"targets": {"y": y}}, ids)
    for k in range(3):
        p = np.clip(0.6 * y + rng.uniform(0, 0.4, n), 0.01, 0.99).astype(np.float32)
        hdf5.write_table(project / f"p{k}.h5", {"preds": {"proba": p}}, ids)
    code = project / "model_specs" / "stacker" / "model.py"
    slow = ('        import os, time\n        if os.environ.get("SLOW_FIT"):\n'
            '            open("fitting", "w").close()\n            time.sleep(300)\n')
    lines = code.read_text().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if "task = task or _infer(y)" in line) + 1
    code.write_text("".join([*lines[:at], slow, *lines[at:]]))
    cmd = [*KMODEL, "compose", "train", "stacker", "p0.h5", "p1.h5", "p2.h5", "--targets",
           "t.h5", "-o", "w"]
    proc = subprocess.Popen(cmd, env={**os.environ, "SLOW_FIT": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (project / "fitting").exists() or proc.poll() is not None)
    assert proc.poll() is None, proc.communicate()[1]  # fitting now, until the signal
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert not (project / "w").exists()
    if sig == signal.SIGTERM:  # handled: one line, exit 143, its temporary folder removed
        assert proc.returncode == 143 and err.startswith("Error [KM800]: interrupted by SIGTERM")
        assert [p.name for p in project.glob(".w.*")] == []
    subprocess.run(cmd, check=True, capture_output=True)
    assert [p.name for p in project.glob(".w.*")] + [p.name for p in project.glob("w.*")] == []
    first = json.loads((project / "w" / "hashes.json").read_text())
    subprocess.run([*cmd[:-1], "w2"], check=True, capture_output=True)
    assert json.loads((project / "w2" / "hashes.json").read_text()) == first


GATED_SETUP = """\
import os
import time

from setuptools import setup

gate = os.environ.get("KMTEST_GATE")
if gate:  # building, in the test's env build: say so, and wait for the test
    open(os.path.join(gate, "building"), "w").close()
    while not os.path.exists(os.path.join(gate, "go")):
        time.sleep(0.01)
setup(name="kmtest-gate", version="{version}", py_modules=["kmtest_gate"])
"""


def gated_sdist(folder: Path) -> Path:
    """A source distribution whose build waits for the test (when KMTEST_GATE is set), a
    new version each time so that no cache holds its wheel."""
    import tarfile

    version = f"0.{int.from_bytes(os.urandom(4), 'big')}"
    name = f"kmtest_gate-{version}"
    files = {"setup.py": GATED_SETUP.format(version=version), "kmtest_gate.py": "x = 1\n",
             "PKG-INFO": f"Metadata-Version: 2.1\nName: kmtest-gate\nVersion: {version}\n"}
    sdist = folder / f"{name}.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for file, text in files.items():
            (folder / file).write_text(text)
            tar.add(folder / file, f"{name}/{file}")
    return sdist


def test_sigterm_during_an_env_build_stops_it(project: Path, tmp_path: Path) -> None:
    envs, gate = project / "envs", tmp_path / "gate"
    gate.mkdir()
    sdist = gated_sdist(tmp_path)
    (envs / "late.yaml").write_text(f'python: "3.11"\npip:\n  - six\n'
                                    f'  - kmtest-gate @ {sdist.as_uri()}\n')
    res = subprocess.run([*KMODEL, "env", "lock", "late"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    home = Path(os.environ["KMODEL_HOME"]) / "envs"
    proc = subprocess.Popen([*KMODEL, "env", "create", "late"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "KMTEST_GATE": str(gate)})
    try:
        wait_for(lambda: (gate / "building").exists() or proc.poll() is not None)
        assert proc.poll() is None, proc.communicate()[1]  # it is building now
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        (gate / "go").touch()  # a build the signal did not stop would go on, not hang
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("Error [KM800]: interrupted by SIGTERM")
    for linked in (p for p in home.glob("late-*") if p.is_symlink()):  # linked only if whole
        assert (linked / ".kmodel-env.json").is_file() and (linked / "bin/python").exists()
    assert not [p for p in home.glob("late-*") if p.is_symlink()]  # it was not finished
    res = subprocess.run([*KMODEL, "env", "create", "late"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_user_files_are_never_replaced_by_an_output(project: Path) -> None:
    """An existing file is replaced only by an output of the same kind that kmodel wrote;
    a user's file given by mistake (a text, a dataset, a folder with a checksum list) is
    refused, untouched."""
    make_input(project / "in.h5", rows=50, targets=np.arange(50) % 2)
    (project / "notes.txt").write_text("precious")
    shutil.copy(project / "in.h5", project / "dataset.h5")
    before = (project / "dataset.h5").read_bytes()

    def refused(*args: str, what: str = "notes.txt") -> None:
        res = subprocess.run([*KMODEL, *args], capture_output=True, text=True, timeout=300)
        assert res.returncode == 1, (args, res.stderr)
        assert res.stderr.startswith(f"Error [KM402]: cannot write output {what}: it exists "
                                     "and is not a file kmodel wrote"), res.stderr

    refused("predict", "toy", "-i", "in.h5", "-o", "notes.txt")
    refused("predict", "toy", "-i", "in.h5", "-o", "dataset.h5", what="dataset.h5")
    refused("data", "breast_cancer", "--train", "notes.txt", "--test", "t.h5")
    refused("score", "a=in.h5", "--targets", "in.h5", "-o", "notes.txt")
    (project / "mine.kmodel").write_text("precious")  # named like a bundle, but not one
    refused("pack", "toy", "-o", "mine.kmodel", what="mine.kmodel")
    assert (project / "notes.txt").read_text() == "precious"
    assert (project / "mine.kmodel").read_text() == "precious"
    assert (project / "dataset.h5").read_bytes() == before
    ok = subprocess.run([*KMODEL, "predict", "toy", "-i", "in.h5", "-o", "p.h5"],
                        capture_output=True, text=True)
    again = subprocess.run([*KMODEL, "predict", "toy", "-i", "in.h5", "-o", "p.h5"],
                           capture_output=True, text=True)
    assert ok.returncode == again.returncode == 0, again.stderr  # its own output: replaced

    forged = project / "forged"  # a user's folder that happens to hold a checksum list
    forged.mkdir()
    (forged / "thesis.txt").write_text("precious")
    (forged / "hashes.json").write_text(json.dumps(
        {"thesis.txt": hashlib.sha256(b"precious").hexdigest()}))
    res = subprocess.run([*KMODEL, "compose", "train", "stacker", "p.h5", "--targets", "in.h5",
                          "--output-of", "toy=y", "-o", "forged"], capture_output=True, text=True)
    assert res.returncode == 1 and "holds files kmodel did not write" in res.stderr, res.stderr
    assert (forged / "thesis.txt").read_text() == "precious"


def test_lock_files_that_are_not_kmodels_are_named_at_once(project: Path) -> None:
    make_input(project / "in.h5", rows=20)
    os.mkfifo(project / "f.h5.lock")  # reading it would block
    (project / "n.h5.lock").write_text("my notes\n")
    for out in ("f.h5", "n.h5"):
        res = subprocess.run([*KMODEL, "predict", "toy", "-i", "in.h5", "-o", out],
                             capture_output=True, text=True, timeout=180)
        assert res.returncode == 1
        assert res.stderr.startswith(f"Error [KM402]: cannot write output {out}.lock: it "
                                     "exists and is not a kmodel lock"), res.stderr
    assert (project / "n.h5.lock").read_text() == "my notes\n"


def test_a_killed_runs_unreadable_working_file_is_not_kept(project: Path) -> None:
    """Killed before its first checkpoint, a run leaves OUT.partial-<id> with nothing
    readable in it: the next run removes it instead of keeping it as OUT.partial forever."""
    make_input(project / "in.h5", rows=40)
    junk = project / "p.h5.partial-0badc0de"
    junk.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(200))
    res = subprocess.run([*KMODEL, "predict", "toy", "-i", "in.h5", "-o", "p.h5", "--resume"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert not junk.exists() and not (project / "p.h5.partial").exists()
    assert sorted(p.name for p in project.glob("p.h5*")) == ["p.h5"]
