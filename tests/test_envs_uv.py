"""uv envs for real: lock, create, no-op, damage detection, pip-config sources, venv fallback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kmodel.envs import backend_for
from kmodel.envs.base import MARKER
from kmodel.envs.pip_sources import uv_environment
from kmodel.envs.uv import UvBackend, requirements
from kmodel.registry import Registry
from kmodel.spec import PipEnvSpec


def small_env(tmp_path: Path, name: str = "tiny", pins: str = "numpy>=2.2") -> Registry:
    envs = tmp_path / "envs"
    envs.mkdir(exist_ok=True)
    (envs / f"{name}.yaml").write_text(f'python: "3.11"\npip:\n  - {pins}\n')
    return Registry(envs=[envs])


def test_runner_needs_are_added_once() -> None:
    spec = PipEnvSpec(python="3.11", pip=["NumPy==1.26.*", "scikit-learn"])
    assert requirements(spec) == ["NumPy==1.26.*", "scikit-learn", "h5py"]


def test_uv_uses_pips_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_INDEX_URL", "file:///somewhere/simple")
    monkeypatch.delenv("UV_INDEX_URL", raising=False)
    from kmodel.envs import pip_sources

    pip_sources.pip_config.cache_clear()
    try:
        env = uv_environment()
    finally:
        pip_sources.pip_config.cache_clear()
    assert env["UV_INDEX_URL"] == "file:///somewhere/simple"
    assert env["UV_PYTHON_DOWNLOADS"] == "never"
    assert env["UV_INDEX_STRATEGY"] == "unsafe-best-match"


@pytest.mark.slow
def test_interrupted_build_is_rebuilt(tmp_path: Path, kmodel_home: Path,
                                      caplog: pytest.LogCaptureFixture) -> None:
    """(The shared scenario for every backend is in test_env_backends.py.)"""
    reg = small_env(tmp_path)
    ref = reg.env("tiny")
    backend = backend_for(ref)
    assert isinstance(backend, UvBackend)
    backend.lock(ref)
    assert "/tmp" not in ref.lockfile.read_text()  # no temp paths in uv's "via" notes
    env = backend.ensure(ref)
    (env.prefix / MARKER).unlink()  # as if the build was killed before its marker
    with caplog.at_level("WARNING", logger="kmodel"):
        again = backend.ensure(ref)
    assert "left incomplete by an interrupted build" in caplog.text
    assert (again.prefix / MARKER).is_file() and again.python.exists()


@pytest.mark.slow
def test_parallel_creates_build_once(tmp_path: Path, kmodel_home: Path) -> None:
    import subprocess
    import sys

    reg = small_env(tmp_path, "par", f"numpy>=2.2  # {os.urandom(8).hex()}")  # a key of its own
    backend_for(reg.env("par")).lock(reg.env("par"))
    cmd = [sys.executable, "-m", "kmodel", "--envs", str(tmp_path / "envs"), "env", "create",
           "par"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for _ in range(8)]
    errors = [p.communicate()[1] for p in procs]
    results = [(p.returncode, err) for p, err in zip(procs, errors, strict=True)]
    assert all(code == 0 for code, _ in results), results
    assert sum("creating env par" in err for _, err in results) == 1
