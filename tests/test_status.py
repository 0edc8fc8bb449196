"""CI that regenerates predictions: `kmodel status` says what is stale and why, `kmodel run`
remakes exactly that (status is fresh after it), `kmodel run -n` says what would run,
`kmodel verify`, `kmodel test`, `kmodel env gc`, and reproducibility from empty envs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from kmodel.io import hdf5

from .conftest import SMALL_COMPOSITION, copy_outputs

pytestmark = pytest.mark.slow
KMODEL = [sys.executable, "-m", "kmodel"]
CONFIG = SMALL_COMPOSITION


def kmodel(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KMODEL, *args], capture_output=True, text=True, timeout=600, env=env)


def status(path: str = "c.yaml") -> dict[str, tuple[str, list[str]]]:
    res = kmodel("status", path, "--json")
    assert res.returncode in (0, 1), res.stderr
    return {Path(e["path"]).relative_to("out/small").as_posix(): (e["state"], e["reasons"])
            for e in json.loads(res.stdout)}


def stale(report: dict[str, tuple[str, list[str]]]) -> dict[str, list[str]]:
    return {k: v[1] for k, v in report.items() if v[0] != "fresh"}


@pytest.fixture
def composed(project: Path, small_composition_run: Path) -> Path:
    """A project whose composition (c.yaml) has every output made and fresh."""
    copy_outputs(small_composition_run, project)
    assert stale(status()) == {}
    return project


def rerun_and_expect_fresh() -> str:
    res = kmodel("run", "c.yaml", "--cores", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    assert stale(status()) == {}
    return res.stderr


def test_each_kind_of_change_is_named_and_a_run_makes_everything_fresh(composed: Path) -> None:
    mlp = composed / "model_specs" / "mlp"
    (mlp / "model.py").write_text((mlp / "model.py").read_text() + "\n# a comment\n")
    spec = composed / "model_specs" / "logreg" / "model.yaml"
    spec.write_text(spec.read_text().replace("description: ", "description: Tuned. "))
    report = stale(status())
    for k in (0, 1):  # every fold's fit and prediction, and what is made of them
        assert report[f"weights/mlp/fold-{k}"] == ["model code"]
        assert report[f"preds/mlp/folds/holdout-{k}.h5"][0] == "model code"
    assert report["preds/mlp/train.h5"][0] == "model code"
    assert report["weights/logreg/full"] == ["spec"]
    assert report["preds/logreg/test.h5"][0] == "spec"
    assert report["ensembler/stacker"][0].startswith("upstream output")
    assert report["scores.json"][0].startswith("upstream output")
    rerun_and_expect_fresh()

    # the test data edited (kmodel made it: an output too): it is remade, and the test
    # predictions with it, not what cross-fitting made
    with h5py.File(composed / "out/small/data/test.h5", "r+") as f:
        f["inputs/x"][0] = f["inputs/x"][0] * 1.5
    report = stale(status())
    assert report["data/test.h5"] == ["values (/inputs/x holds other values than kmodel wrote "
                                      "(its checksum differs))"]
    assert report["preds/mlp/test.h5"] == report["preds/logreg/test.h5"] == [
        "input", "upstream output (out/small/data/test.h5 not fresh)"]
    assert "preds/mlp/train.h5" not in report and "weights/mlp/full" not in report
    rerun_and_expect_fresh()

    # what Snakemake cannot see: a weight file changed under its recorded hash, and
    # predictions made by another kmodel version
    with h5py.File(composed / "out/small/preds/logreg/train.h5", "r+") as f:
        f.attrs["kmodel_version"] = "0.0.1"
    report = stale(status())
    assert report["preds/logreg/train.h5"] == ["kmodel version"]
    dry = kmodel("run", "c.yaml", "-n")
    assert dry.returncode == 0, dry.stderr
    assert "dry run, nothing was run" in dry.stdout and "finished" not in dry.stdout
    assert "roc_auc" not in dry.stdout  # no score table from old files
    assert "stale    out/small/preds/logreg/train.h5  (kmodel version)" in dry.stdout
    log = rerun_and_expect_fresh()
    assert "remaking 1 stale output(s): out/small/preds/logreg/train.h5" in log
    # a line per finished job, counted and timed; Snakemake's job blocks are in its log only
    assert re.search(r"^\[1/\d+\] oof logreg \(\d+\.\d s\)$", log, re.M), log
    assert "localrule" not in log and re.search(r"^Complete log\(s\): \S+", log, re.M)

    # the example data's config changed: the data and everything made from it
    config = composed / "c.yaml"
    config.write_text(config.read_text().replace("builtin: breast_cancer",
                                                 "builtin: breast_cancer\n  seed: 7"))
    report = stale(status())
    assert report["data/train.h5"] == report["data/test.h5"] == ["data config (seed)"]
    assert report["folds/data/fold-0-fit.h5"] == ["upstream output (out/small/data/train.h5 not "
                                             "fresh)"]
    assert report["preds/mlp/test.h5"][0].startswith("upstream output (") and \
        "out/small/data/test.h5" in report["preds/mlp/test.h5"][0]
    assert report["scores.json"][0].startswith("upstream output")
    rerun_and_expect_fresh()
    with h5py.File(composed / "out/small/data/test.h5") as f:
        assert f.attrs["seed"] == 7


def test_a_changed_lockfile_is_named_and_run_refuses_a_stale_one(composed: Path) -> None:
    lock = composed / "envs" / "numpy2.lock"
    lock.write_text(lock.read_text() + "# reviewed\n")
    report = stale(status())
    assert report["weights/mlp/full"] == ["env lock"]
    assert report["preds/mlp/train.h5"][0] == "env lock"
    assert report["ensembler/stacker"][0] == "env lock"
    rerun_and_expect_fresh()

    env_spec = composed / "envs" / "numpy2.yaml"
    env_spec.write_text(env_spec.read_text() + "# edited, not relocked\n")
    res = kmodel("run", "c.yaml", "--cores", "2")
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1].startswith("Error [KM201]: envs/numpy2.lock is "
                                                          "stale"), res.stderr
    assert "kmodel env lock numpy2" in res.stderr and "Nothing to be done" not in res.stderr


def test_verify_says_what_no_longer_matches(composed: Path) -> None:
    """(On a copy of a composition made elsewhere: what it records names its own files.)"""
    pred = "out/small/preds/mlp/test.h5"
    ok = kmodel("verify", pred)
    assert ok.returncode == 0 and "CHANGED" not in ok.stdout, ok.stdout
    assert kmodel("verify", "out/small/ensemble/test.h5").returncode == 0
    code = composed / "model_specs/mlp/model.py"
    code.write_text(code.read_text() + "\n# edited\n")
    with h5py.File(composed / "out/small/data/test.h5", "r+") as f:
        f["inputs/x"][1] = 0
    bad = kmodel("verify", pred)
    assert bad.returncode == 1
    changed = [ln.split()[1:3] for ln in bad.stdout.splitlines() if ln.startswith("CHANGED")]
    assert changed == [["model", "code"], ["input", str(composed / "out/small/data/test.h5:")]]


def test_model_tests_pass_and_a_failure_names_the_worst_row(project: Path) -> None:
    res = kmodel("test", "--all")
    assert res.returncode == 0, res.stdout + res.stderr
    for model, output in (("logreg", "proba"), ("gnb", "proba"), ("mlp", "proba"),
                          ("stacker", "pred")):
        assert f"ok       {model} /preds/{output}: 20 rows within tolerance" in res.stdout
    assert "no test  toy" in res.stdout
    expected = project / "model_specs/mlp/example/expected.h5"
    preds, ids = hdf5.read_group(expected, "preds")
    preds["proba"][7] += 1e-3  # one row off by far more than rtol 1e-5
    preds["proba"][3] += 0.5 * (1e-6 + 1e-5 * abs(preds["proba"][3]))  # one just inside
    hdf5.write_table(expected, {"preds": preds}, ids)
    res = kmodel("test", "mlp")
    assert res.returncode == 1
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("FAIL"))
    worst = ids[7].decode()
    assert line.startswith("FAIL     mlp /preds/proba: 1 of 20 rows out of tolerance; "
                           f"worst row id '{worst}': got "), line
    assert "abs diff 0.001" in line and "rel diff" in line and "rtol 1e-05" in line


def tiny_env(project: Path, home: Path) -> tuple[dict[str, str], Path]:
    """A small env, locked and built in its own KMODEL_HOME: (its environment, its spec)."""
    env = {**os.environ, "KMODEL_HOME": str(home)}
    spec = project / "envs" / "tiny.yaml"
    spec.write_text('python: "3.11"\npip: [numpy>=2.2]\n')
    assert kmodel("env", "lock", "tiny", env=env).returncode == 0
    assert kmodel("env", "create", "tiny", env=env).returncode == 0
    return env, spec


def test_env_gc_removes_builds_no_lock_refers_to(project: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    env, spec = tiny_env(project, home)
    old = {p.name for p in (home / "envs").iterdir() if p.is_symlink()}
    spec.write_text('python: "3.11"\npip: [numpy>=2.2, six]\n')
    assert kmodel("env", "lock", "tiny", env=env).returncode == 0
    assert kmodel("env", "create", "tiny", env=env).returncode == 0
    new = {p.name for p in (home / "envs").iterdir() if p.is_symlink()} - old
    dry = kmodel("env", "gc", "--dry-run", env=env)
    assert dry.returncode == 0 and f"would remove {home / 'envs' / next(iter(old))}" in dry.stdout
    assert "changed since it was built" in dry.stdout
    assert {p.name for p in (home / "envs").iterdir() if p.is_symlink()} == old | new
    res = kmodel("env", "gc", env=env)
    assert res.returncode == 0 and "removed" in res.stdout
    assert {p.name for p in (home / "envs").iterdir() if p.is_symlink()} == new
    assert list((home / "envs" / ".builds").iterdir()) == [(home / "envs" / next(iter(new)))
                                                          .resolve()]
    assert kmodel("env", "gc", env=env).stdout.strip() == "nothing to remove"


def test_env_gc_removes_a_build_whose_lockfile_alone_is_gone(project: Path,
                                                            tmp_path: Path) -> None:
    home = tmp_path / "home"
    env, _ = tiny_env(project, home)
    (project / "envs" / "tiny.lock").unlink()  # its env spec stays
    res = kmodel("env", "gc", env=env)
    assert res.returncode == 0 and "removed" in res.stdout, res.stdout
    assert "tiny.lock is gone" in res.stdout, res.stdout
    assert not [p for p in (home / "envs").iterdir() if p.is_symlink()]


def test_two_runs_from_empty_envs_give_bit_identical_predictions(project: Path,
                                                                   tmp_path: Path) -> None:
    """Same machine, same locks: bit-identical (across CPUs: within the tests' tolerance)."""
    (project / "c.yaml").write_text(CONFIG)
    found = []
    for run in ("a", "b"):
        env = {**os.environ, "KMODEL_HOME": str(tmp_path / f"home-{run}")}
        res = kmodel("run", "c.yaml", "--cores", "2", env=env)
        assert res.returncode == 0, res.stderr[-3000:]
        data: dict[str, np.ndarray] = {}
        for path in sorted((project / "out/small").rglob("*.h5")):
            with h5py.File(path, "r") as f:
                for group in ("preds", "metadata"):
                    for name, ds in f.get(group, {}).items():
                        data[f"{path.relative_to(project)}/{group}/{name}"] = ds[()]
        found.append(data)
        subprocess.run(["rm", "-rf", str(project / "out"), str(project / ".snakemake")],
                       check=True)
    a, b = found
    # ids of the data and folds (6 files), the folds' predictions (4), the out-of-fold and
    # test predictions (4), the ensemble: datasets and ids
    assert a.keys() == b.keys() and len(a) == 6 + 8 + 8 + 2
    assert all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


def test_deleted_outputs_are_remade_and_a_touched_checkout_reruns_nothing(
        composed: Path) -> None:
    (composed / "out/small/preds/mlp/test.h5").unlink()
    subprocess.run(["rm", "-r", str(composed / "out/small/ensembler/stacker")], check=True)
    report = status()
    assert report["preds/mlp/test.h5"][0] == "missing"
    assert report["ensembler/stacker"][0] == "missing"
    rerun_and_expect_fresh()
    # a fresh checkout: every source file newer than every output, nothing changed
    for path in (composed / "model_specs").rglob("*"):
        os.utime(path)
    for path in (composed / "envs").iterdir():
        os.utime(path)
    res = kmodel("run", "c.yaml", "--cores", "2")
    assert res.returncode == 0 and "Nothing to be done" in res.stderr, res.stderr[-2000:]


def test_changed_weights_without_their_hashes_stop_before_snakemake(composed: Path) -> None:
    """A composition whose models predict with their own weights (not cv, which trains
    its own) checks them before Snakemake starts."""
    w = composed / "model_specs/mlp/weights/mlp-bias-1.npy"
    np.save(w, np.load(w) + 1.0)  # `kmodel hash mlp --write` not run
    before = (composed / "out/small/preds/mlp/test.h5").read_bytes()
    (composed / "c.yaml").write_text(CONFIG.replace("{folds: 2}", "{method: in-sample}"))
    res = kmodel("run", "c.yaml", "--cores", "2")
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1].startswith("Error [KM301]: "), res.stderr
    assert "Building DAG" not in res.stderr  # refused before Snakemake, which would delete
    assert (composed / "out/small/preds/mlp/test.h5").read_bytes() == before


def test_status_looks_at_what_files_hold_not_only_what_they_claim(composed: Path,
                                                                 tmp_path: Path) -> None:
    out = composed / "out/small"
    # a shard (rows 0:100) put where the whole prediction belongs
    part = tmp_path / "part.h5"
    res = kmodel("predict", "mlp", "-i", str(out / "data/test.h5"), "-o", str(part),
                 "--rows", "0:100", "--batch-size", "64")
    assert res.returncode == 0, res.stderr
    whole = out / "preds/mlp/test.h5"
    saved = whole.read_bytes()
    whole.write_bytes(part.read_bytes())
    assert stale(status())["preds/mlp/test.h5"][0].startswith("a shard (rows 0:100 of ")
    assert kmodel("verify", str(whole)).returncode == 1
    whole.write_bytes(saved)
    with h5py.File(whole, "a") as f:  # its datasets gone, its attributes intact
        del f["preds"]
    assert stale(status())["preds/mlp/test.h5"] == [
        "datasets [] in /preds, the spec's outputs are ['proba']"]
    whole.write_bytes(saved)
    (out / "scores.json").write_text('{"a": {"auc": "x"}}')
    assert stale(status())["scores.json"] == ["not a score table of logreg, mlp, ensemble"]
    rerun_and_expect_fresh()

    # one model dropped: the ensembler was trained on other files
    config = composed / "c.yaml"
    config.write_text(config.read_text().replace("[logreg, mlp]", "[mlp]"))
    report = stale(status())
    assert report["ensembler/stacker"] == [
        "inputs (trained on the predictions of logreg, mlp, in this order; the composition "
        "lists mlp)", "upstream output (other files than it was made from)"]
    config.write_text(CONFIG)
    # the project moved to another folder: still fresh
    moved = tmp_path.with_name(f"{tmp_path.name} moved here")
    subprocess.run(["cp", "-a", str(composed), str(moved)], check=True)
    os.chdir(moved)
    assert stale(status()) == {}


def test_env_gc_never_leaves_kmodel_home_and_keeps_builds_others_use(
        project: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    env, spec = tiny_env(project, home)
    other = tmp_path / "other project"  # the same lock in a second project
    subprocess.run(["cp", "-r", str(project / "envs"), str(other)], check=True)
    os.chdir(other.parent)
    res = subprocess.run([*KMODEL, "--envs", str(other), "env", "create", "tiny"],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    os.chdir(project)
    user = tmp_path / "user data"
    user.mkdir()
    (user / "thesis.txt").write_text("precious")
    (home / "envs" / "mine").symlink_to(user)
    spec.write_text(spec.read_text() + "# edited, not relocked\n")  # the lock still names it
    assert kmodel("env", "gc", env=env).stdout.strip() == "nothing to remove"
    subprocess.run(["rm", "-r", str(project / "envs")], check=True)  # this project is gone
    assert kmodel("env", "gc", env=env).stdout.strip() == "nothing to remove"  # other uses it
    subprocess.run(["rm", "-r", str(other)], check=True)  # and so is the other
    res = kmodel("env", "gc", env=env)
    assert res.returncode == 0 and "removed" in res.stdout, res.stdout
    assert (user / "thesis.txt").read_text() == "precious"
    assert [p.name for p in (home / "envs").iterdir() if p.is_symlink()] == ["mine"]


def test_informational_runs_print_no_finished_line_nor_old_scores(composed: Path) -> None:
    for flags in (["-np"], ["--dry-run"], ["--dry-r"], ["--summary"], ["--summ"],
                  ["--list-rules"]):
        res = kmodel("run", "c.yaml", *flags)
        assert res.returncode == 0, (flags, res.stderr)
        assert "finished" not in res.stdout and "roc_auc" not in res.stdout, flags


def test_model_test_files_that_cannot_serve_are_errors_not_hangs(project: Path) -> None:
    expected = project / "model_specs/mlp/example/expected.h5"
    preds, ids = hdf5.read_group(expected, "preds")
    hdf5.write_table(expected, {"preds": {k: v[:5] for k, v in preds.items()}}, ids[:5])
    res = kmodel("test", "mlp")
    assert res.returncode == 1 and "FAIL     mlp /preds/proba" in res.stdout, res.stdout
    gnb = project / "model_specs/gnb/example/expected.h5"
    gnb.unlink()
    os.mkfifo(gnb)
    res = kmodel("test", "--all")  # would block reading the FIFO
    assert res.returncode == 1
    assert any(ln.startswith("ERROR    gnb  [KM400]") for ln in res.stdout.splitlines()), res.stdout
    assert "ok       logreg /preds/proba" in res.stdout  # the other models still ran
