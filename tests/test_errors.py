"""The error catalogue through the CLI: one test per entry of kmodel/errors.py.

Every test goes through click's CliRunner and checks the exact code in ``Error [KMxxx]:``,
the key parts of the one-line message (file, field, value and the fix), the exit status,
that stderr holds exactly that one line and no traceback (without -v), and that no output
file (nor a ``.partial`` or ``.<name>.tmp-*`` sibling) was left behind.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner, Result

from kmodel.cli import cli
from kmodel.io import hdf5
from kmodel.predict import ensure_env
from kmodel.registry import Registry

from .conftest import make_input


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def error_line(result: Result, code: str, *parts: str, exit_code: int = 1) -> str:
    """The one stderr line of a failed command, checked: code, parts, exit status, no traceback."""
    assert result.exit_code == exit_code, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not an escape
    err = result.stderr
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(f"Error [{code}]: "), line
    for part in parts:
        assert part in line, (part, line)
    return line


def leftovers(output: Path) -> list[Path]:
    """The output itself and any temporary sibling of it that a failed run left behind."""
    folder = output.parent
    names = [output, *folder.glob(f"{output.name}.partial*"), *folder.glob(f".{output.name}.*")]
    return [p for p in names if p.exists()]


def spec_path(project: Path, model: str = "toy") -> Path:
    return project / "model_specs" / model / "model.yaml"


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (old, path)
    path.write_text(text.replace(old, new, 1))


@pytest.fixture
def toy_input(project: Path) -> Path:
    make_input(project / "in.h5", rows=100)
    return project / "in.h5"


def predict_toy(project: Path, *extra: str, model: str = "toy") -> tuple[Result, Path]:
    out = project / "preds" / "out.h5"
    out.parent.mkdir(exist_ok=True)
    return invoke(*extra, "predict", model, "-i", "in.h5", "-o", str(out)), out


@pytest.fixture
def built_toy_env(project: Path) -> None:
    """Build the numpy2 env before the command, so its build log is not on stderr."""
    reg = Registry()
    ensure_env(reg, reg.model("toy"))


# --- specs and configuration (KM1xx) -------------------------------------------------


def test_km100_malformed_yaml_names_file_and_line(project: Path, toy_input: Path) -> None:
    edit(spec_path(project), "version: 0.1.0\n", "version: 0.1.0: beta\n")
    result, out = predict_toy(project)
    error_line(result, "KM100", "model_specs/toy/model.yaml:2: invalid YAML: mapping values "
               "are not allowed", "; fix the YAML syntax")
    assert leftovers(out) == []


def test_km101_unknown_key(project: Path, toy_input: Path) -> None:
    edit(spec_path(project), "version: 0.1.0\n", "version: 0.1.0\nauthor: me\n")
    result, out = predict_toy(project)
    error_line(result, "KM101", "model_specs/toy/model.yaml:3: author: unknown key",
               "remove it")
    assert leftovers(out) == []


def test_km101_wrong_type(project: Path, toy_input: Path) -> None:
    edit(spec_path(project), "    dtype: float32\n    shape: [3]",
         "    dtype: float32\n    shape: three")
    result, out = predict_toy(project)
    error_line(result, "KM101", "model_specs/toy/model.yaml:11: inputs.0.shape:",
               "(got 'three')", "write a list")
    assert leftovers(out) == []


def test_km110_unknown_model(project: Path, toy_input: Path) -> None:
    result, out = predict_toy(project, model="nope")
    error_line(result, "KM110", "unknown model 'nope'", "(searched model_specs)",
               "known models: gnb, logreg, mlp, stacker, toy",
               "add model_specs/<name>/model.yaml or set KMODEL_PATH")
    assert leftovers(out) == []


def test_km111_unknown_env(project: Path, toy_input: Path) -> None:
    edit(spec_path(project), "env: numpy2\n", "env: nope\n")
    result, out = predict_toy(project)
    error_line(result, "KM111", "unknown env 'nope'", "(named by model_specs/toy/model.yaml)",
               "no envs/nope.yaml", "known envs: numpy2, sklearn-legacy")
    assert leftovers(out) == []


def test_km120_unsafe_entrypoint_path(project: Path, toy_input: Path) -> None:
    edit(spec_path(project), "entrypoint: model.py:build", "entrypoint: ../x.py:build")
    result, out = predict_toy(project)
    error_line(result, "KM120", "model_specs/toy/model.yaml: entrypoint:",
               "path '../x.py' leaves the model folder",
               "use a relative path inside the model's folder")
    assert leftovers(out) == []


def test_km002_usage_error_exits_2(project: Path) -> None:
    error_line(invoke("env", "lock"), "KM002", "give env or model names, or --all",
               exit_code=2)
    error_line(invoke("env", "lock", "numpy2", "--all"), "KM002", "(not both)", exit_code=2)


def test_click_usage_error_exits_2_without_traceback(project: Path, toy_input: Path) -> None:
    result = invoke("predict", "toy", "-i", "in.h5")
    assert result.exit_code == 2
    error_line(result, "KM002", "Missing option '-o' / '--output'", "predict --help`",
               exit_code=2)


# --- environments (KM2xx) ------------------------------------------------------------


def test_km200_missing_lock(project: Path, toy_input: Path) -> None:
    (project / "envs" / "numpy2.lock").unlink()
    result, out = predict_toy(project)
    error_line(result, "KM200", "env 'numpy2' has no lockfile envs/numpy2.lock",
               "run `kmodel env lock numpy2`")
    assert leftovers(out) == []


def test_km201_stale_lock(project: Path, toy_input: Path) -> None:
    edit(project / "envs" / "numpy2.yaml", "numpy>=2.2", "numpy>=2.1")
    result, out = predict_toy(project)
    error_line(result, "KM201", "envs/numpy2.lock is stale: envs/numpy2.yaml changed",
               "run `kmodel env lock numpy2`")
    assert leftovers(out) == []


# --- weights and integrity (KM3xx) ---------------------------------------------------


def test_km300_missing_weights(project: Path, toy_input: Path) -> None:
    (project / "model_specs/toy/weights/scale-w-0.npy").unlink()
    result, out = predict_toy(project)
    error_line(result, "KM300", "model 'toy': weights file",
               "model_specs/toy/weights/scale-w-0.npy is missing",
               "restore it or run `kmodel hash toy --write`")
    assert leftovers(out) == []


def test_km301_hash_mismatch(project: Path, toy_input: Path) -> None:
    np.save(project / "model_specs/toy/weights/scale-w-0.npy", np.ones(3))
    result, out = predict_toy(project)
    error_line(result, "KM301", "model_specs/toy/weights/scale-w-0.npy: sha256 mismatch",
               "expected ", "found ", "restore the file or run `kmodel hash toy --write`")
    assert leftovers(out) == []


# --- inputs and outputs (KM4xx) ------------------------------------------------------


def test_km400_missing_input(project: Path) -> None:
    result, out = predict_toy(project)
    error_line(result, "KM400", "input file in.h5 does not exist", "check the path")
    assert leftovers(out) == []


def _wrong_name(path: Path) -> None:
    x = np.zeros((10, 3), np.float32)
    hdf5.write_table(path, {"inputs": {"features": x}}, [f"r{i}" for i in range(10)])


def _wrong_dtype(path: Path) -> None:
    x = np.full((10, 3), b"abc", dtype="S3")
    hdf5.write_table(path, {"inputs": {"x": x}}, [f"r{i}" for i in range(10)])


def _wrong_shape(path: Path) -> None:
    make_input(path, rows=10, dim=4)


@pytest.mark.parametrize(("write", "parts"), [
    (_wrong_name, ("in.h5: no dataset /inputs/x required by model 'toy'",
                   "(found ['features'])", "rename the dataset or fix the spec's inputs")),
    (_wrong_dtype, ("in.h5: /inputs/x has dtype |S3, model 'toy' expects float32",
                    "convert the data")),
    (_wrong_shape, ("in.h5: /inputs/x has rows of shape (4,), model 'toy' expects (3,)",
                    "reshape the data")),
], ids=["name", "dtype", "shape"])
def test_km401_input_schema(project: Path, write: Callable[[Path], None],
                            parts: tuple[str, ...]) -> None:
    write(project / "in.h5")
    result, out = predict_toy(project)
    error_line(result, "KM401", *parts)
    assert leftovers(out) == []


def test_km402_output_not_writable(project: Path, toy_input: Path) -> None:
    # tests run as root, which ignores permission bits: make the output's parent a file
    (project / "somefile.txt").write_text("not a folder\n")
    result = invoke("predict", "toy", "-i", "in.h5", "-o", "somefile.txt/out.h5")
    error_line(result, "KM402", "cannot write output somefile.txt/out.h5",
               "somefile.txt is a file, not a folder", "choose a writable location")
    assert (project / "somefile.txt").read_text() == "not a folder\n"
    assert sorted(p.name for p in project.iterdir()) == sorted(
        ["envs", "model_specs", "in.h5", "somefile.txt"])


# --- running models (KM5xx) ----------------------------------------------------------


@pytest.mark.slow
def test_km500_model_raises(project: Path, toy_input: Path, built_toy_env: None) -> None:
    edit(spec_path(project), "  factor: 2.0\n", "  factor: 2.0\n  fail_at: 10\n")
    result, out = predict_toy(project)
    error_line(result, "KM500", "model 'toy' raised ValueError: toy failure at row 100",
               "run with -v for its traceback")
    assert leftovers(out) == []

    result, out = predict_toy(project, "-v")
    assert result.exit_code == 1
    err = result.stderr
    assert err.splitlines()[-1].startswith("Error [KM500]: model 'toy' raised ValueError")
    # the model's own traceback, in full: from the runner down to the raising line
    assert "Traceback (most recent call last):" in err
    assert "runner.py" in err and "in main" in err
    assert re.search(r'model_specs/toy/model\.py", line \d+, in predict', err), err
    assert 'raise ValueError("toy failure at row %d" % self.seen)' in err
    assert "ValueError: toy failure at row 100" in err
    assert leftovers(out) == []


KILLER_MODEL = """\
import os
import signal


class Killer:
    def predict(self, x):
        os.kill(os.getpid(), signal.SIGKILL)

    def set_weights(self, w):
        pass


def build(factor=1.0):
    return Killer()
"""


@pytest.mark.slow
def test_km501_runner_killed_by_signal(project: Path, toy_input: Path,
                                       built_toy_env: None) -> None:
    (project / "model_specs/toy/model.py").write_text(KILLER_MODEL)
    result, out = predict_toy(project)
    error_line(result, "KM501", "model 'toy': the runner was killed by SIGKILL",
               "(out of memory or a time limit?)", "no rows were written; rerun")
    # killed before its first batch: nothing worth resuming is kept
    assert not out.exists()
    assert leftovers(out) == []


# --- composition (KM6xx) -------------------------------------------------------------


def _preds(path: Path, ids: list[str]) -> Path:
    hdf5.write_table(path, {"preds": {"y": np.linspace(0, 1, len(ids), dtype=np.float32)}},
                     ids)
    return path


IDS = [f"r{i}" for i in range(10)]


@pytest.mark.parametrize(("ids", "parts"), [
    (IDS[:7], ("a.h5: 3 id(s) of the reference file are missing, e.g. 'r7'",
               "predict on the same input file")),
    ([*IDS[:9], "r0"], ("a.h5: 1 duplicated id(s) in /metadata/id, e.g. 'r0'",
                        "each row needs a unique id")),
    ([*IDS, "x1", "x2"], ("a.h5: 2 id(s) not in the reference file",
                          "predict on the same input file")),
], ids=["missing", "duplicated", "misaligned"])
def test_km600_compose_train_ids(project: Path, ids: list[str], parts: tuple[str, ...]) -> None:
    make_input(project / "t.h5", rows=10, targets=np.arange(10) % 2)
    _preds(project / "a.h5", ids)
    result = invoke("compose", "train", "stacker", "a.h5", "--targets", "t.h5", "-o", "w")
    error_line(result, "KM600", *parts)
    assert leftovers(project / "w") == []


def test_km601_targets_length_mismatch(project: Path) -> None:
    make_input(project / "t.h5", rows=10)
    with h5py.File(project / "t.h5", "a") as f:
        f["targets/y"] = np.arange(8) % 2
    _preds(project / "a.h5", IDS)
    result = invoke("compose", "train", "stacker", "a.h5", "--targets", "t.h5", "-o", "w")
    error_line(result, "KM601", "t.h5: /targets/y has 8 rows but /metadata/id has 10",
               "they must match")
    assert leftovers(project / "w") == []


# --- workflow (KM7xx) ----------------------------------------------------------------


CONFIG = """\
name: small
results: out
data:
  builtin: breast_cancer
models: [mlp]
ensembler: stacker
batch_size: 64
"""


@pytest.mark.slow
def test_km700_snakemake_failure_names_rule_and_log(project: Path) -> None:
    code = project / "model_specs/mlp/model.py"
    edit(code, "    def predict(self, x):\n",
         "    def predict(self, x):\n        raise OSError('disk on fire')\n")
    (project / "c.yaml").write_text(CONFIG)
    result = invoke("run", "c.yaml", "--cores", "1")
    assert result.exit_code == 1, result.output
    err = result.stderr
    # Snakemake's own progress is streamed to stderr; the error is its last line, once
    errors = [ln for ln in err.splitlines() if ln.startswith("Error [")]
    assert errors == [err.splitlines()[-1]], err
    line = errors[0]
    # (a fold's fit predicts too: its weights, reloaded, must reproduce the trained model)
    m = re.fullmatch(r"Error \[KM700\]: Snakemake failed in rule '(?:predict_(?:fold|test)|"
                     r"fit_(?:fold|full))'; see its log (out/small/logs/(?:predict|fit)_mlp_"
                     r"(?:fold\d|test|full)\.log): Error \[KM500\]: model 'mlp' raised OSError: "
                     r"disk on fire; run with -v for its traceback", line)
    assert m, line
    assert (project / m.group(1)).is_file()
    assert "Traceback" not in err
    # kmodel's summary of Snakemake's log: the failed job, the end of its own log
    assert any(re.fullmatch(r"FAILED (predict|fit)_(fold mlp \d|test mlp|full mlp)", ln)
               for ln in err.splitlines()), err
    assert "    Error [KM500]: model 'mlp' raised OSError: disk on fire; run with -v for its " \
           "traceback" in err.splitlines()
    assert "localrule" not in err and "[1/" in err  # data's job done, no raw job blocks
    for split in ("train", "test"):
        assert leftovers(project / f"out/small/preds/mlp/{split}.h5") == []
    assert not (project / "out/small/scores.json").exists()


# --- environment errors through the CLI ---------------------------------------------


def test_km205_python_version_not_found(project: Path) -> None:
    (project / "envs" / "future.yaml").write_text('python: "3.99"\npip: [six]\n')
    r = invoke("env", "lock", "future")
    line = error_line(r, "KM205")
    assert "no python 3.99 found" in line and "change `python:` in the env spec" in line
    assert not (project / "envs" / "future.lock").exists()


def test_km206_env_path_of_an_unbuilt_env(project: Path) -> None:
    (project / "envs" / "cold.yaml").write_text('python: "3.11"\npip: [six]\n')
    lock = "six==1.16.0 \\\n    --hash=sha256:" + "0" * 64 + "\n"
    (project / "envs" / "cold.lock").write_text(lock)
    r = invoke("env", "path", "cold")
    assert "run `kmodel env create cold`" in error_line(r, "KM206")


@pytest.mark.slow
def test_km203_unsatisfiable_requirements(project: Path) -> None:
    (project / "envs" / "clash.yaml").write_text(
        'python: "3.11"\npip:\n  - numpy==1.26.*\n  - numpy>=2.2\n')
    r = invoke("env", "lock", "clash")
    line = error_line(r, "KM203")
    assert "cannot lock env 'clash' (envs/clash.yaml)" in line
    assert not (project / "envs" / "clash.lock").exists()


@pytest.mark.slow
def test_km202_build_fails_on_a_bad_hash(project: Path) -> None:
    (project / "envs" / "tampered.yaml").write_text('python: "3.11"\npip: [six]\n')
    r = invoke("env", "lock", "tampered")
    assert r.exit_code == 0, r.stderr
    lock = project / "envs" / "tampered.lock"
    text = lock.read_text()
    start = text.index("six==")
    digest = text.index("sha256:", start) + len("sha256:")
    lock.write_text(text[:digest] + "0" * 64 + text[digest + 64:])
    r = invoke("env", "create", "tampered")
    assert r.exit_code == 1 and "Traceback" not in r.stderr
    last = r.stderr.splitlines()[-1]  # after the "creating env" progress line
    assert last.startswith("Error [KM202]: cannot build env 'tampered'"), r.stderr
    home = Path(os.environ["KMODEL_HOME"]) / "envs"
    assert all(p.suffix == ".lock" for p in home.glob("tampered-*"))  # only the file lock
    assert not list(home.glob(".builds/tampered-*"))  # nothing half-built left


def test_km204_unreachable_channel_fails_fast(project: Path) -> None:
    (project / "envs" / "far.yaml").write_text(
        "channels: [http://127.0.0.1:9/nothing]\ndependencies: [python=3.11]\n")
    r = invoke("env", "lock", "far")  # refused by the channel check, before any solve
    line = error_line(r, "KM204")
    assert "http://127.0.0.1:9/nothing" in line
    assert not (project / "envs" / "far.conda-lock.yml").exists()
