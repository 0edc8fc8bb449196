"""uv envs for real: lock, create, no-op, damage detection, pip-config sources, venv fallback."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kmodel.envs import backend_for
from kmodel.envs.base import MARKER
from kmodel.envs.pip_sources import uv_environment
from kmodel.envs.uv import UvBackend, VenvBackend, requirements
from kmodel.errors import LockMissingError, LockStaleError
from kmodel.registry import Registry
from kmodel.spec import PipEnvSpec


def small_env(tmp_path: Path, name: str = "tiny", pins: str = "numpy>=2.2") -> Registry:
    envs = tmp_path / "envs"
    envs.mkdir(exist_ok=True)
    (envs / f"{name}.yaml").write_text(f'python: "3.11"\npip:\n  - {pins}\n')
    return Registry(envs_dir=envs)


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
def test_lock_create_noop_and_damage(tmp_path: Path, kmodel_home: Path,
                                     caplog: pytest.LogCaptureFixture) -> None:
    reg = small_env(tmp_path)
    ref = reg.env("tiny")
    backend = backend_for(ref)
    assert isinstance(backend, UvBackend)
    with pytest.raises(LockMissingError, match="kmodel env lock tiny"):
        backend.ensure(ref)
    backend.lock(ref)
    text = ref.lockfile.read_text()
    assert "--hash=sha256:" in text and "h5py==" in text and "kmodel-spec-sha256:" in text

    env = backend.ensure(ref)
    assert env.prefix.is_relative_to(kmodel_home) and (env.prefix / MARKER).is_file()
    t0 = time.perf_counter()
    again = backend.ensure(ref)
    assert time.perf_counter() - t0 < 1.0 and again == env  # typically ~5 ms

    mtime = ref.lockfile.stat().st_mtime_ns
    lock_text = ref.lockfile.read_text()
    backend.lock(ref)  # re-locking an unchanged spec changes nothing, not even the mtime
    assert ref.lockfile.read_text() == lock_text and ref.lockfile.stat().st_mtime_ns == mtime
    assert "/tmp" not in lock_text

    (env.prefix / "bin" / "python").unlink()  # damaged
    with caplog.at_level("WARNING", logger="kmodel"):
        rebuilt = backend.ensure(ref)
    assert "damaged (python missing)" in caplog.text
    assert rebuilt.python.exists()

    (env.prefix / MARKER).unlink()  # a build killed before its marker
    caplog.clear()
    with caplog.at_level("WARNING", logger="kmodel"):
        backend.ensure(ref)
    assert "left incomplete by an interrupted build" in caplog.text

    (tmp_path / "envs" / "tiny.yaml").write_text('python: "3.11"\npip:\n  - numpy>=2.3\n')
    ref = reg.env("tiny")
    assert backend.status(ref).drift
    with pytest.raises(LockStaleError, match="run `kmodel env lock tiny`"):
        backend.ensure(ref)


@pytest.mark.slow
def test_parallel_creates_build_once(tmp_path: Path, kmodel_home: Path) -> None:
    import subprocess
    import sys

    reg = small_env(tmp_path, "par")
    backend_for(reg.env("par")).lock(reg.env("par"))
    cmd = [sys.executable, "-m", "kmodel", "--envs", str(tmp_path / "envs"), "env", "create",
           "par"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for _ in range(8)]
    errors = [p.communicate()[1] for p in procs]
    results = [(p.returncode, err) for p, err in zip(procs, errors, strict=True)]
    assert all(code == 0 for code, _ in results), results
    assert sum("creating env par" in err for _, err in results) == 1


@pytest.mark.slow
def test_venv_fallback_without_uv(tmp_path: Path, kmodel_home: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMODEL_NO_UV", "1")
    reg = small_env(tmp_path, "plain", pins="six")
    ref = reg.env("plain")
    backend = backend_for(ref)
    assert isinstance(backend, VenvBackend)
    backend.lock(ref)
    assert "six==" in ref.lockfile.read_text() and "--hash=sha256:" in ref.lockfile.read_text()
    env = backend.ensure(ref)
    import subprocess

    out = subprocess.run([env.python, "-c", "import six, numpy, h5py; print('ok')"],
                         capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr
