"""Outputs you can prove: every dataset kmodel writes carries the sha256 of its values, every
JSON document it writes its content_sha256, so an edit made after kmodel wrote a file is
found (status: stale, verify: CHANGED, merge/compose/score: refused), whichever kind of
output it is; the ensembler's inputs (models, order, outputs) are part of its identity; and
a moved or copied project checks its own files, never the original's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from kmodel.io import hdf5

from .conftest import copy_outputs, make_input, make_project

KMODEL = [sys.executable, "-m", "kmodel"]
OUT = "out/small"


def kmodel(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KMODEL, *args], capture_output=True, text=True, timeout=600,
                          cwd=cwd)


def stale(cwd: Path | None = None) -> dict[str, list[str]]:
    res = kmodel("status", "c.yaml", "--json", cwd=cwd)
    assert res.returncode in (0, 1), res.stderr
    return {Path(e["path"]).relative_to(OUT).as_posix(): e["reasons"]
            for e in json.loads(res.stdout) if e["state"] != "fresh"}


@pytest.fixture
def composed(project: Path, small_composition_run: Path) -> Path:
    copy_outputs(small_composition_run, project)
    assert stale() == {}
    return project


def _flip(path: Path, dataset: str, row: int = 0, keep_mtime: bool = False) -> None:
    """Change one value in place, attributes (and, if asked, the mtime) kept."""
    before = path.stat()
    with h5py.File(path, "r+") as f:
        d = f[dataset]
        value = d[row]
        if d.dtype.kind == "S":
            d[row] = value[::-1] + b"x"
        else:
            d[row] = np.asarray(1 - value if d.dtype.kind == "f" else value + 1, d.dtype)
    if keep_mtime:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def _edit_json(path: Path, change: dict[str, object]) -> None:
    body = json.loads(path.read_text())
    body.update(change)
    path.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")


@pytest.mark.slow
def test_an_edited_value_in_any_kind_of_output_is_stale_and_run_remakes_it(composed: Path
                                                                           ) -> None:
    out = composed / OUT
    ensemble_before = hdf5.read_group(out / "ensemble/test.h5", "preds")[0]
    h5_edits = {  # one value in each kind of HDF5 output kmodel writes
        "data/test.h5": "inputs/x",                       # example data
        "folds/data/fold-0-fit.h5": "targets/y",          # a fold's rows
        "preds/mlp/folds/holdout-1.h5": "preds/proba",    # a fold's predictions
        "preds/logreg/train.h5": "preds/proba",           # out-of-fold predictions
        "preds/mlp/test.h5": "metadata/id",               # a base model's test ids
        "ensemble/test.h5": "preds/pred",                 # the ensemble's predictions
    }
    for name, dataset in h5_edits.items():
        _flip(out / name, dataset, keep_mtime=name == "ensemble/test.h5")
    # JSON documents and weight files: the ensembler's record and a fold's manifest, a
    # refitted model's weights, the score table and its figure
    _edit_json(out / "ensembler/stacker/provenance.json", {"stacking": "in-sample"})
    _edit_json(out / "weights/mlp/fold-0/hashes.json", {"files": {}})
    weight = next((out / "weights/logreg/full").glob("*.npy"))
    np.save(weight, np.load(weight) * 2)
    scores = json.loads((out / "scores.json").read_text())
    scores["scores"]["ensemble"]["roc_auc"] = 1.0
    (out / "scores.json").write_text(json.dumps(scores, indent=2, sort_keys=True))
    svg = out / "scores.svg"
    svg.write_text(svg.read_text().replace("</svg>", "<text>edited</text></svg>"))

    report = stale()
    for name, dataset in h5_edits.items():
        assert report[name][0].startswith(f"values (/{dataset} holds other values"), name
    assert report["ensembler/stacker"][0].startswith("edited ("), report["ensembler/stacker"]
    assert report["weights/mlp/fold-0"][0].startswith("edited ("), report["weights/mlp/fold-0"]
    assert report["weights/logreg/full"][0].startswith("weights ("), report
    assert report["scores.json"][0].startswith("edited after `kmodel score` wrote it")
    assert report["scores.svg"] == ["edited (it differs from the figure `kmodel score` drew)"]

    verify = kmodel("verify", f"{OUT}/ensemble/test.h5")
    assert verify.returncode == 1
    assert any(ln.split()[:2] == ["CHANGED", "values"] for ln in verify.stdout.splitlines())

    res = kmodel("run", "c.yaml", "--cores", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    assert stale() == {}
    after = hdf5.read_group(out / "ensemble/test.h5", "preds")[0]
    for name, values in ensemble_before.items():  # remade, not kept: the same predictions
        np.testing.assert_allclose(after[name], values, rtol=1e-5, atol=1e-6)
    assert json.loads((out / "scores.json").read_text())["scores"]["ensemble"]["roc_auc"] < 1


def test_merge_compose_score_and_oof_refuse_edited_predictions(project: Path,
                                                              tmp_path: Path) -> None:
    make_input(project / "in.h5", rows=300,
               targets=np.random.default_rng(1).normal(size=300))  # a regression
    shards = []
    for k in range(3):
        shard = project / f"s{k}.h5"
        res = kmodel("predict", "toy", "-i", "in.h5", "-o", str(shard), "--shard", f"{k}/3",
                     "--batch-size", "50")
        assert res.returncode == 0, res.stderr
        shards.append(shard)
    whole = project / "whole.h5"
    assert kmodel("merge", "-o", str(whole), *map(str, shards)).returncode == 0
    assert hdf5.values_problems(whole) == []  # the merged file's checksums, as written
    again = project / "again.h5"
    assert kmodel("predict", "toy", "-i", "in.h5", "-o", str(again), "--batch-size", "50"
                  ).returncode == 0
    with h5py.File(whole) as a, h5py.File(again) as b:  # equal to an unsharded run's
        for name in ("preds/y", "metadata/id"):
            assert a[name].attrs[hdf5.CHECKSUM] == b[name].attrs[hdf5.CHECKSUM]

    _flip(shards[1], "preds/y", row=5)
    res = kmodel("merge", "-o", "m2.h5", *map(str, shards))
    assert res.returncode == 1 and not (project / "m2.h5").exists()
    assert res.stderr.startswith(f"Error [KM407]: {shards[1]}: /preds/y holds other values "
                                 "than kmodel wrote"), res.stderr

    _flip(again, "preds/y", row=299)
    for args in (["compose", "train", "--targets", "in.h5", "--stacking", "in-sample",
                  "--output-of", "toy=y", "-o", "w", "--", "stacker", "whole.h5", "again.h5"],
                 ["score", "--targets", "in.h5", "--output-of", "toy=y", "whole.h5",
                  "again.h5"]):
        res = kmodel(*args)
        assert res.returncode == 1, res.stderr
        assert res.stderr.startswith("Error [KM407]: again.h5: /preds/y holds other values"), \
            res.stderr
    verify = kmodel("verify", "again.h5")
    assert verify.returncode == 1 and "CHANGED  values" in verify.stdout, verify.stdout


def test_a_resumed_prediction_has_the_checksums_of_an_uninterrupted_one(project: Path) -> None:
    """The runner hashes as it writes; a resumed run hashes the rows it keeps once more."""
    from kmodel.io.hdf5 import PredictionWriter

    ids = hdf5.as_ids([f"r{i}" for i in range(1000)])
    values = np.random.default_rng(0).normal(size=(1000, 3)).astype(np.float32)
    outputs = {"p": ("float32", (3,))}

    def write(path: Path, parts: list[tuple[int, int]], resume: bool = False) -> None:
        w = PredictionWriter(path, outputs, 1000, ids.dtype, 128, resume=resume)
        for lo, hi in parts:
            w.write(lo, ids[lo:hi], {"p": values[lo:hi]})
        w.close(complete=w.rows_done == 1000)

    write(project / "once.h5", [(lo, min(lo + 128, 1000)) for lo in range(0, 1000, 128)])
    write(project / "twice.h5", [(0, 128), (128, 300)])  # stopped after 300 rows
    assert hdf5.values_problems(project / "twice.h5") == []  # incomplete: nothing stamped
    write(project / "twice.h5", [(300, 700), (700, 1000)], resume=True)
    with h5py.File(project / "once.h5") as a, h5py.File(project / "twice.h5") as b:
        assert a.attrs[hdf5.VALUES] == "sha256"
        for name in ("preds/p", "metadata/id"):
            assert a[name].attrs[hdf5.CHECKSUM] == b[name].attrs[hdf5.CHECKSUM]
    gap = PredictionWriter(project / "gap.h5", outputs, 1000, ids.dtype, 128)
    with pytest.raises(ValueError, match="in order"):  # a gap would leave rows unhashed
        gap.write(128, ids[128:256], {"p": values[128:256]})
    gap.close(complete=False)


def test_files_of_other_tools_and_older_kmodels(tmp_path: Path) -> None:
    """A file kmodel did not write has nothing to check; a prediction file of an older
    kmodel (no checksums) says so, rather than passing as checked."""
    foreign = tmp_path / "kipoi.h5"
    with h5py.File(foreign, "w") as f:
        f["preds"] = np.zeros(3, np.float32)
        f["metadata/id"] = np.arange(3)
    assert hdf5.values_problems(foreign) == []
    old = tmp_path / "old.h5"
    with h5py.File(old, "w") as f:
        f["preds/y"] = np.zeros(3, np.float32)
        f["metadata/id"] = np.array([b"a", b"b", b"c"])
        f.attrs[hdf5.ROWS_DONE] = 3
        f.attrs[hdf5.COMPLETE] = True
    assert hdf5.values_problems(old) == ["no value checksums (written by an older kmodel)"]


@pytest.mark.slow
def test_the_ensembler_is_stale_when_its_inputs_change(composed: Path) -> None:
    config = composed / "c.yaml"
    config.write_text(config.read_text().replace("models: [logreg, mlp]",
                                                 "models: [mlp, logreg]"))
    report = stale()
    assert report["ensembler/stacker"] == [
        "inputs (trained on the predictions of logreg, mlp, in this order; the composition "
        "lists mlp, logreg)"]
    assert report["ensemble/test.h5"][0].startswith("upstream output")
    res = kmodel("run", "c.yaml", "--cores", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    assert stale() == {}
    config.write_text(config.read_text() + "outputs: {mlp: proba}\n")
    assert stale()["ensembler/stacker"][0].startswith("inputs (trained on outputs {}")


@pytest.mark.slow
def test_a_copied_project_verifies_against_its_own_files(small_composition_run: Path,
                                                         tmp_path: Path) -> None:
    """Records name files relative to themselves: a moved project still verifies, and a
    copy with its ensembler deleted fails, even though the original's is still there."""
    moved = tmp_path / "moved"
    make_project(moved)
    copy_outputs(small_composition_run, moved)
    ensemble = f"{OUT}/ensemble/test.h5"
    ok = kmodel("verify", ensemble, cwd=moved)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert str(small_composition_run) not in ok.stdout  # its own files, by their own paths
    assert kmodel("verify", f"{OUT}/preds/mlp/test.h5", cwd=moved).returncode == 0

    shutil.rmtree(moved / OUT / "ensembler")
    bad = kmodel("verify", ensemble, cwd=moved)
    assert bad.returncode == 1
    assert any(ln.split()[:3] == ["CHANGED", "weights", "folder"]
               for ln in bad.stdout.splitlines()), bad.stdout
    shutil.rmtree(moved / OUT / "data")
    bad = kmodel("verify", f"{OUT}/preds/mlp/test.h5", cwd=moved)
    assert bad.returncode == 1 and f"{moved / OUT / 'data' / 'test.h5'} is missing" in bad.stdout
    assert kmodel("verify", ensemble, cwd=small_composition_run).returncode == 0
