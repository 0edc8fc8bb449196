"""Sharded predictions: shards cut at batch multiples merge into the unsharded file, bit for
bit; shards that overlap, leave rows out or come from other runs are refused; one runner
process serves several inputs; a composition fans shards out and merges them."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from kmodel.io import hdf5

from .conftest import make_input

pytestmark = pytest.mark.slow
KMODEL = [sys.executable, "-m", "kmodel"]


def kmodel(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KMODEL, *args], capture_output=True, text=True, timeout=300)


def datasets(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {"id": f["metadata/id"][()], **{k: v[()] for k, v in f["preds"].items()}}


def assert_identical(a: Path, b: Path) -> None:
    x, y = datasets(a), datasets(b)
    assert x.keys() == y.keys()
    for key in x:
        assert x[key].dtype == y[key].dtype and np.array_equal(x[key], y[key]), key


@pytest.fixture
def rows_3000(project: Path) -> Path:
    make_input(project / "in.h5", rows=3000)
    res = kmodel("predict", "toy", "-i", "in.h5", "-o", "full.h5", "--batch-size", "128")
    assert res.returncode == 0, res.stderr
    return project / "full.h5"


def test_four_shards_merged_equal_the_unsharded_file(project: Path, rows_3000: Path) -> None:
    shards = []
    for k in range(4):
        res = kmodel("predict", "toy", "-i", "in.h5", "-o", f"s{k}.h5", "--shard", f"{k}/4",
                     "--batch-size", "128")
        assert res.returncode == 0, res.stderr
        shards.append(f"s{k}.h5")
    spans = [(hdf5.read_attrs(project / s)["rows_start"], hdf5.read_attrs(project / s)["rows_stop"])
             for s in shards]
    assert spans[0][0] == 0 and spans[-1][1] == 3000
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    assert all(start % 128 == 0 for start, _ in spans)  # cut at batch boundaries
    res = kmodel("merge", *reversed(shards), "-o", "merged.h5")  # any order
    assert res.returncode == 0, res.stderr
    assert_identical(rows_3000, project / "merged.h5")
    attrs = hdf5.read_attrs(project / "merged.h5")
    assert attrs["merged_shards"] == 4 and attrs["rows_stop"] == 3000
    assert attrs["input_sha256"] == hdf5.read_attrs(rows_3000)["input_sha256"]


def test_explicit_row_ranges_and_their_mistakes(project: Path, rows_3000: Path) -> None:
    for name, rows in (("a.h5", "0:1024"), ("b.h5", "1024:2048"), ("c.h5", "2048:"),
                       ("over.h5", "1000:2000")):
        res = kmodel("predict", "toy", "-i", "in.h5", "-o", name, "--rows", rows,
                     "--batch-size", "128")
        assert res.returncode == 0, res.stderr
    ok = kmodel("merge", "a.h5", "b.h5", "c.h5", "-o", "m.h5")
    assert ok.returncode == 0, ok.stderr
    assert_identical(rows_3000, project / "m.h5")

    cases = {
        ("a.h5", "c.h5"): "rows 1024:2048 of 3000 are in no shard; predict them with "
                          "`--rows 1024:2048`",
        ("a.h5", "b.h5"): "rows 2048:3000 of 3000 are in no shard",
        ("a.h5", "over.h5", "b.h5", "c.h5"): "overlaps",
        ("a.h5", "a.h5", "b.h5", "c.h5"): "overlaps",
    }
    for shards, part in cases.items():
        res = kmodel("merge", *shards, "-o", "bad.h5")
        assert res.returncode == 1, res.stderr
        assert res.stderr.startswith("Error [KM603]: ") and part in res.stderr, res.stderr
        assert not (project / "bad.h5").exists()

    # shards whose attributes claim other rows than they hold, or that lost their datasets
    tampered = {"rows_stop": lambda f: f.attrs.__setitem__("rows_stop", 2048 + 20),
                "range": lambda f: f.attrs.__setitem__("rows_stop", "abc"),
                "preds": lambda f: f.__delitem__("preds")}
    for what, change in tampered.items():
        shutil.copy(project / "b.h5", project / "t.h5")
        with h5py.File(project / "t.h5", "a") as f:
            change(f)
        res = kmodel("merge", "a.h5", "t.h5", "c.h5", "-o", "bad.h5")
        assert res.returncode == 1, (what, res.stderr)
        assert res.stderr.startswith("Error [KM603]: t.h5"), (what, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1 and not (project / "bad.h5").exists()

    bad = kmodel("predict", "toy", "-i", "in.h5", "-o", "x.h5", "--rows", "2000:4000")
    assert bad.returncode == 2 and "Error [KM002]: --rows 2000:4000 is not a range" in bad.stderr


def test_shards_of_different_models_or_inputs_do_not_merge(project: Path,
                                                           rows_3000: Path) -> None:
    toy2 = project / "model_specs" / "toy2"
    shutil.copytree(project / "model_specs" / "toy", toy2)
    spec = toy2 / "model.yaml"
    spec.write_text(spec.read_text().replace("name: toy", "name: toy2"))
    make_input(project / "other.h5", rows=3000, seed=9)
    runs = [("toy", "in.h5", "0/2", "a.h5"), ("toy", "other.h5", "1/2", "b.h5"),
            ("toy2", "in.h5", "1/2", "c.h5")]
    for model, source, shard, out in runs:
        res = kmodel("predict", model, "-i", source, "-o", out, "--shard", shard)
        assert res.returncode == 0, res.stderr
    for pair, key in ((("a.h5", "b.h5"), "input_sha256"), (("a.h5", "c.h5"), "model")):
        res = kmodel("merge", *pair, "-o", "bad.h5")
        assert res.returncode == 1 and "Error [KM603]" in res.stderr, res.stderr
        assert f"differ in {key}" in res.stderr


def test_one_runner_serves_several_inputs(project: Path) -> None:
    make_input(project / "a.h5", rows=500)
    make_input(project / "b.h5", rows=300, seed=1)
    code = project / "model_specs/toy/model.py"
    code.write_text(code.read_text().replace(
        "def build(factor=1.0, fail_at=None, sleep=0.0, gate=None):",
        "def build(factor=1.0, fail_at=None, sleep=0.0, gate=None):\n"
        "    with open('builds.txt', 'a') as f:\n        f.write('built\\n')"))
    res = kmodel("predict", "toy", "-i", "a.h5", "-o", "pa.h5", "-i", "b.h5", "-o", "pb.h5")
    assert res.returncode == 0, res.stderr
    assert (project / "builds.txt").read_text() == "built\n"  # one runner, one model build
    for single in (("a.h5", "sa.h5"), ("b.h5", "sb.h5")):
        assert kmodel("predict", "toy", "-i", single[0], "-o", single[1]).returncode == 0
    assert_identical(project / "pa.h5", project / "sa.h5")
    assert_identical(project / "pb.h5", project / "sb.h5")
    mismatch = kmodel("predict", "toy", "-i", "a.h5", "-o", "x.h5", "-i", "b.h5")
    assert mismatch.returncode == 2 and "one -o per -i" in mismatch.stderr


CONFIG = """\
name: sharded
results: out
data:
  builtin: breast_cancer
models: [logreg, mlp]
ensembler: stacker
stacking: {{method: in-sample}}  # shards cut predictions made with a model's own weights
batch_size: 32
shards: {shards}
"""


def test_a_composition_fans_shards_out_and_merges_them(project: Path) -> None:
    (project / "plain.yaml").write_text(CONFIG.format(shards=1).replace("sharded", "plain"))
    (project / "sharded.yaml").write_text(CONFIG.format(shards="{logreg: 3}"))  # mlp: 1
    for config in ("plain.yaml", "sharded.yaml"):
        res = kmodel("run", config, "--cores", "2")
        assert res.returncode == 0, res.stderr[-3000:]
    for model in ("logreg", "mlp"):
        for split in ("train", "test"):
            assert_identical(project / f"out/plain/preds/{model}/{split}.h5",
                             project / f"out/sharded/preds/{model}/{split}.h5")
    shards = sorted(p.name for p in (project / "out/sharded/preds/logreg/shards").iterdir())
    assert shards == [f"{s}-{k}.h5" for s in ("test", "train") for k in range(3)]
    scores = [json.loads((project / f"out/{c}/scores.json").read_text())
              for c in ("plain", "sharded")]
    assert scores[0] == scores[1]


def test_merge_refuses_shards_of_other_code_and_an_output_over_their_input(
        project: Path, rows_3000: Path) -> None:
    for k in range(2):
        assert kmodel("predict", "toy", "-i", "in.h5", "-o", f"s{k}.h5", "--shard",
                      f"{k}/2").returncode == 0
    ok = kmodel("merge", "s0.h5", "s1.h5", "-o", "m.h5")
    assert ok.returncode == 0 and kmodel("verify", "m.h5").returncode == 0
    over = kmodel("merge", "s0.h5", "s1.h5", "-o", "in.h5")
    assert over.returncode == 1 and over.stderr.startswith("Error [KM402]"), over.stderr
    code = project / "model_specs/toy/model.py"
    code.write_text(code.read_text() + "\n# changed\n")
    assert kmodel("predict", "toy", "-i", "in.h5", "-o", "s1.h5", "--shard", "1/2"
                  ).returncode == 0
    res = kmodel("merge", "s0.h5", "s1.h5", "-o", "mixed.h5")
    assert res.returncode == 1 and "differ in code_sha256" in res.stderr, res.stderr
