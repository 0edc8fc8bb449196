"""A finished runner is checked, not trusted; the runner is isolated from kmodel's files;
failures are reported by their cause. Real envs, real runner processes, real files.

Each misbehaving model below replaces the toy model's code; the command must give one
``Error [KM5xx]`` line naming the model and what it did, and leave no output behind.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from .conftest import make_input

pytestmark = pytest.mark.slow
KMODEL = [sys.executable, "-m", "kmodel"]

HEADER = """\
import os, sys
import numpy as np


class Model:
    seen = 0

    def set_weights(self, w):
        self.w = w["scale-w-0"]

    def predict(self, x):
        self.seen += len(x)
{body}

def build(factor=1.0):
    return Model()
"""


def model_code(body: str) -> str:
    return HEADER.format(body="\n".join("        " + line for line in body.splitlines()))


OK = 'return {"y": (x @ self.w).astype("float32"), "norm": np.linalg.norm(x, axis=1)}'

MISBEHAVING = {
    "sys-exit-0-midway": ("if self.seen > 50:\n    sys.exit(0)\n" + OK,
                          "KM503", "called sys.exit(0) part-way"),
    "sys-exit-1": ("sys.exit(1)", "KM503", "called sys.exit(1) part-way"),
    "os-exit-0-midway": ("if self.seen > 50:\n    os._exit(0)\n" + OK,
                         "KM503", "exited with status 0 before finishing"),
    "os-exit-7": ("os._exit(7)", "KM503", "exited with status 7"),
    "keyboard-interrupt": ("raise KeyboardInterrupt", "KM503", "raised KeyboardInterrupt"),
    "transposed-output": ('return {"y": (x @ self.w).astype("float32"), '
                          '"norm": np.stack([np.linalg.norm(x, axis=1)] * 2)}',
                          "KM503", "shape (2, 10)"),
    "flat-output-for-a-column": ('return {"y": (x @ self.w).reshape(-1, 1), '
                                 '"norm": np.linalg.norm(x, axis=1)}', "KM503", "shape (10, 1)"),
    "one-row-short": ('return {"y": (x @ self.w)[1:], "norm": np.linalg.norm(x, axis=1)}',
                      "KM503", "shape (9,)"),
    "unknown-output": (OK[:-1] + ', "extra": x}', "KM503", "['extra']"),
    "strings": ('return {"y": np.array(["a"] * len(x)), "norm": np.linalg.norm(x, axis=1)}',
                "KM503", "dtype <U1"),
    "not-a-dict": ("return None", "KM503", "predict returned NoneType"),
    "raises": ("raise ValueError('bad row')", "KM500", "raised ValueError: bad row"),
}


@pytest.fixture
def toy(project: Path) -> Path:
    make_input(project / "in.h5", rows=200)
    subprocess.run([*KMODEL, "env", "create", "toy"], check=True, capture_output=True)
    return project / "model_specs" / "toy" / "model.py"


def predict(*extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KMODEL, "predict", "toy", "-i", "in.h5", "-o", "out.h5",
                           "--batch-size", "10", *extra], capture_output=True, text=True,
                          timeout=120)


def one_error_line(res: subprocess.CompletedProcess[str], code: str, *parts: str) -> str:
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("Error [")]
    assert len(errors) == 1 and errors[0].startswith(f"Error [{code}]: model 'toy'"), res.stderr
    for part in parts:
        assert part in errors[0], (part, errors[0])
    return errors[0]


@pytest.mark.parametrize("case", sorted(MISBEHAVING))
def test_a_misbehaving_model_is_named_and_nothing_is_kept(project: Path, toy: Path,
                                                          case: str) -> None:
    body, code, part = MISBEHAVING[case]
    toy.write_text(model_code(body))
    one_error_line(predict(), code, part)
    assert sorted(p.name for p in project.glob("out.h5*")) == []


def test_protocol_lookalikes_and_garbage_on_stdout_and_stderr_change_nothing(
        project: Path, toy: Path) -> None:
    lookalikes = ['KMODEL-PROGRESS 999999 999999', 'KMODEL-ERROR {"kind": "model"}',
                  '{"event": "done", "rows": 1}', '{"event": "error", "kind": "model"}']
    toy.write_text(model_code(
        f"for line in {lookalikes!r}:\n    print(line)\n    sys.stderr.write(line + '\\n')\n"
        'sys.stdout.buffer.write(b"\\xff\\x00 garbage")\n' + OK))
    res = predict()
    assert res.returncode == 0, res.stderr
    with h5py.File(project / "out.h5") as f:
        assert len(f["preds/y"]) == 200 and f.attrs["kmodel_complete"]


def test_a_model_that_prints_300_mb_costs_the_host_no_memory(project: Path, toy: Path) -> None:
    toy.write_text(model_code(
        'for _ in range(5):\n    sys.stderr.write("x" * (1 << 20) + "\\n")\n'
        '    sys.stdout.write("y" * (1 << 20))\n' + OK))
    # 20 batches x 10 MB: 200 MB on stderr and stdout, half of it in 1 MB lines
    code = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], "
            "capture_output=True); print(r.returncode, "
            "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    res = subprocess.run([sys.executable, "-c", code, *KMODEL, "predict", "toy", "-i", "in.h5",
                          "-o", "out.h5", "--batch-size", "10"], capture_output=True, text=True)
    status, peak_kb = map(int, res.stdout.split())
    assert status == 0
    assert peak_kb / 1024 < 150, peak_kb  # the largest of host and runner (65 MB here)


def test_nothing_of_kmodel_shadows_a_models_imports(project: Path, toy: Path) -> None:
    """kmodel/ holds datasets.py, errors.py, spec.py...: a model must not import them."""
    toy.write_text(model_code(
        "import importlib.util\n"
        'names = ["datasets", "errors", "spec", "registry", "hashes", "runner", "kmodel"]\n'
        "found = [n for n in names if importlib.util.find_spec(n)]\n"
        'assert not found, f"kmodel modules visible to the model: {found} {sys.path}"\n'
        'assert not any("kmodel" in p.split(os.sep)[-1] for p in sys.path[1:]), sys.path\n'
        + OK))
    res = predict()
    assert res.returncode == 0, res.stderr


def test_a_file_size_limit_is_named_not_a_crash(project: Path, toy: Path) -> None:
    toy.write_text(model_code(OK))
    make_input(project / "in.h5", rows=200_000)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    res = subprocess.run([*KMODEL, "predict", "toy", "-i", "in.h5", "-o", "out.h5"],
                         capture_output=True, text=True, preexec_fn=limit, timeout=120)
    line = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 1 and line.startswith("Error [KM402]: cannot write output "), line
    assert "file size limit" in line
    assert not (project / "out.h5").exists() and not list(project.glob("out.h5.partial*"))


@pytest.fixture
def tiny_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2 MB tmpfs (needs root and mount rights: skipped where they are missing)."""
    folder = tmp_path_factory.mktemp("tiny-disk")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {res.stderr.strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_says_no_space_left(project: Path, toy: Path, tiny_disk: Path) -> None:
    toy.write_text(model_code(OK))
    make_input(project / "in.h5", rows=200_000)
    out = tiny_disk / "out.h5"
    res = subprocess.run([*KMODEL, "predict", "toy", "-i", "in.h5", "-o", str(out)],
                         capture_output=True, text=True, timeout=120)
    line = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 1, res.stderr
    assert line.startswith(f"Error [KM402]: cannot write output {out}: no space left"), line
    assert list(tiny_disk.iterdir()) == []


def test_an_unwritable_kmodel_home_is_named(project: Path) -> None:
    blocker = project / "not-a-folder"
    blocker.write_text("")
    make_input(project / "in.h5", rows=10)
    env = {**os.environ, "KMODEL_HOME": str(blocker / "home")}
    res = subprocess.run([*KMODEL, "predict", "toy", "-i", "in.h5", "-o", "out.h5"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 1
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith(f"Error [KM207]: KMODEL_HOME {blocker / 'home'} is not writable"), line


def test_a_lock_whose_hash_no_longer_matches_names_the_package_and_both_hashes(
        project: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    lock = project / "envs" / "numpy2.lock"
    text = lock.read_text()
    name, digest = next((ln.split("==")[0], nxt.split("sha256:")[1].strip())
                        for ln, nxt in zip(text.splitlines(), text.splitlines()[1:], strict=False)
                        if "==" in ln and "sha256:" in nxt)
    lock.write_text(text.replace(digest, "0" * 64, 1))
    env = {**os.environ, "KMODEL_HOME": str(tmp_path_factory.mktemp("home"))}
    res = subprocess.run([*KMODEL, "env", "create", "numpy2"], capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode == 1
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("Error [KM202]: cannot build env 'numpy2': " + name), line
    assert "the lock's hash does not match the package" in line, line
    assert "0" * 64 in line and digest in line and "relock with `kmodel env lock numpy2`" in line
    assert "index" not in line and "network" not in line, line  # not the cause
    lock.write_text(text.replace(digest, digest[:-1], 1))  # not a sha256 at all
    res = subprocess.run([*KMODEL, "env", "create", "numpy2"], capture_output=True, text=True,
                         env=env, timeout=300)
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("Error [KM202]: cannot build env 'numpy2': envs/numpy2.lock holds "
                           "a hash that is malformed or missing"), line
    assert line.endswith("the lock was edited: relock with `kmodel env lock numpy2`"), line


def test_train_with_a_model_that_exits_is_named(project: Path, toy: Path) -> None:
    toy.write_text(model_code(OK) + "\nModel.fit = lambda self, x, y: sys.exit(2)\n"
                   "Model.get_weights = lambda self: {}\n")
    make_input(project / "t.h5", rows=20, targets=np.zeros(20))
    res = subprocess.run([*KMODEL, "train", "toy", "-i", "t.h5", "-o", "w"],
                         capture_output=True, text=True, timeout=120)
    one_error_line(res, "KM503", "called sys.exit(2)")
    assert not (project / "w").exists()


def test_a_file_size_limit_in_kmodel_itself_is_named_and_leaves_nothing(project: Path) -> None:
    """kmodel's own HDF5 writes (here `kmodel data`) hit the limit: one line, no crash."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))

    res = subprocess.run([*KMODEL, "data", "breast_cancer", "--train", "d/tr.h5", "--test",
                          "d/te.h5"], capture_output=True, text=True, preexec_fn=limit,
                         timeout=120)
    assert res.returncode == 1, (res.returncode, res.stderr)  # not 139: no crash at exit
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("Error [KM402]: cannot write output d/tr.h5: the file size limit"), \
        line
    assert list((project / "d").iterdir()) == []
