"""Shared fixtures: a throwaway project (copies of the repo's specs and locks) and one
KMODEL_HOME per test session, so each real env is built once and reused."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from kmodel.io import hdf5
from kmodel.registry import Registry

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def kmodel_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One env cache for the whole session (env builds are the slow part)."""
    home = Path(os.environ.get("KMODEL_TEST_HOME") or tmp_path_factory.mktemp("kmodel-home"))
    old = os.environ.get("KMODEL_HOME")
    os.environ["KMODEL_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("KMODEL_HOME", None)
    else:
        os.environ["KMODEL_HOME"] = old


@pytest.fixture(scope="session")
def conda_channel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local conda channel: the host python repackaged, pip, and tiny test packages."""
    from .conda_channel import build_channel

    return build_channel(tmp_path_factory.mktemp("conda-channel"))


TOY_MODEL = """\
import os
import time

import numpy as np


class Scale:
    def __init__(self, factor, fail_at, sleep, gate):
        self.factor, self.fail_at, self.sleep, self.w = factor, fail_at, sleep, None
        self.seen, self.gate = 0, gate

    def predict(self, x):
        time.sleep(self.sleep)
        self.seen += len(x)
        if self.fail_at is not None and self.seen > self.fail_at:
            raise ValueError("toy failure at row %d" % self.seen)
        if self.gate and self.seen >= 1500 and not os.path.exists(self.gate + "/parked"):
            # half-way (a checkpoint written: 15 batches took >= 0.75 s), the first run
            # waits for the test: it says so, and goes on once the test makes "go"
            open(self.gate + "/parked", "w").close()
            while not os.path.exists(self.gate + "/go"):
                time.sleep(0.01)
        return {"y": x @ self.w["scale-w-0"] * self.factor, "norm": np.linalg.norm(x, axis=1)}

    def fit(self, x, y):
        self.w = {"scale-w-0": np.linalg.lstsq(x, y, rcond=None)[0]}
        return self

    def get_weights(self):
        return self.w

    def set_weights(self, w):
        self.w = w


def build(factor=1.0, fail_at=None, sleep=0.0, gate=None):
    return Scale(factor, fail_at, sleep, gate)
"""

TOY_SPEC = """\
name: toy
version: 0.1.0
description: y = x @ w * factor, and the row norm
env: numpy2
entrypoint: model.py:build
args:
  factor: 2.0
inputs:
  - name: x
    dtype: float32
    shape: [3]
outputs:
  - name: y
    dtype: float32
    shape: []
  - name: norm
    dtype: float64
    shape: []
train:
  args: {}
"""


#: the small composition the workflow tests run (two base models, cross-fitted on two
#: folds, the stacker)
SMALL_COMPOSITION = """\
name: small
results: out
data:
  builtin: breast_cancer
models: [logreg, mlp]
ensembler: stacker
stacking: {folds: 2}
batch_size: 64
"""

#: workflows/deep.yaml's framework models and their envs (torch, Keras on JAX, LightGBM):
#: about 1.6 GB of envs, built only by the tests that ask for them (tests/test_deep.py)
DEEP_MODELS = ["torch-mlp", "keras-mlp", "lgbm"]
DEEP_ENVS = ["torch-cpu", "keras-jax", "lightgbm"]


def make_project(folder: Path, deep: bool = False) -> Path:
    """A project folder with the repo's envs and models plus a toy model; the framework
    models of workflows/deep.yaml and their envs only if ``deep``."""
    skip = [] if deep else [f"{e}.{ext}" for e in DEEP_ENVS for ext in ("yaml", "lock")]
    shutil.copytree(REPO / "envs", folder / "envs", ignore=shutil.ignore_patterns(*skip))
    skip = ["__pycache__", *([] if deep else DEEP_MODELS)]
    shutil.copytree(REPO / "model_specs", folder / "model_specs",
                    ignore=shutil.ignore_patterns(*skip))
    toy = folder / "model_specs" / "toy"
    (toy / "weights").mkdir(parents=True)
    (toy / "model.py").write_text(TOY_MODEL)
    (toy / "model.yaml").write_text(TOY_SPEC)
    np.save(toy / "weights" / "scale-w-0.npy", np.array([1.0, -2.0, 0.5]))
    (toy / "weights" / "params.json").write_text('{"weights": ["scale-w-0"]}\n')
    from kmodel.weights import write_hashes

    write_hashes(Registry([folder / "model_specs"]).model("toy"))
    return folder


@pytest.fixture
def project(tmp_path: Path, kmodel_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh project folder (cwd) with the repo's envs and models plus a toy model."""
    monkeypatch.delenv("KMODEL_PATH", raising=False)
    monkeypatch.delenv("KMODEL_ENVS", raising=False)
    make_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def small_composition_run(tmp_path_factory: pytest.TempPathFactory, kmodel_home: Path
                          ) -> Path:
    """A project in which `kmodel run` made every output of SMALL_COMPOSITION (c.yaml), once
    per session: tests copy it (``composed``) instead of running it again."""
    import subprocess
    import sys

    folder = make_project(tmp_path_factory.mktemp("composed"))
    (folder / "c.yaml").write_text(SMALL_COMPOSITION)
    env = {k: v for k, v in os.environ.items() if k not in ("KMODEL_PATH", "KMODEL_ENVS")}
    res = subprocess.run([sys.executable, "-m", "kmodel", "status", "c.yaml"], cwd=folder,
                         capture_output=True, text=True, env=env, timeout=600)
    # data, folds, fits, predictions, composer: all missing
    assert res.returncode == 1 and res.stdout.count("missing") == len(res.stdout.splitlines())
    res = subprocess.run([sys.executable, "-m", "kmodel", "run", "c.yaml", "--cores", "2"],
                         cwd=folder, capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return folder


def copy_outputs(source: Path, project: Path) -> None:
    """The composition's config, outputs and Snakemake's records of them, copied into
    ``project`` (times kept: Snakemake and status see them as made there)."""
    shutil.copy2(source / "c.yaml", project / "c.yaml")
    for name in ("out", ".snakemake"):
        shutil.copytree(source / name, project / name, symlinks=True,
                        ignore=shutil.ignore_patterns("locks", "incomplete"))


def make_input(path: Path, rows: int = 100, dim: int = 3, seed: int = 0,
               ids: list[str] | None = None, targets: np.ndarray | None = None) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    groups = {"inputs": {"x": x}}
    if targets is not None:
        groups["targets"] = {"y": targets}
    hdf5.write_table(path, groups, ids if ids is not None else [f"r{i}" for i in range(rows)])
    return x


def wait_for(predicate: Callable[[], object], timeout: float = 180.0) -> None:
    """Poll until ``predicate()`` is true (a process reached a moment), or fail."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


#: the test files that take longest, longest first: run first, so that the workers (a file
#: each, `--dist loadfile`) finish together instead of one waiting for the last long file
LONGEST = ["test_slurm.py", "test_slurm_nodes.py", "test_deep.py", "test_status.py",
           "test_recovery.py", "test_weight_formats.py", "test_stacking.py", "test_workflow.py",
           "test_faults.py", "test_hostile.py", "test_bundle.py"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: k for k, name in enumerate(LONGEST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST)))
