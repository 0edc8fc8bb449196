"""One contract for every env backend (uv, stdlib venv + pip, conda via py-rattler).

Each backend's class only says how to write a small spec for it; the scenario is shared:
lock (reproducibly) -> build -> no-op -> damage -> rebuild -> drift.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest

from kmodel.envs import backend_for
from kmodel.envs.base import MARKER, EnvBackend
from kmodel.errors import LockMissingError, LockStaleError
from kmodel.registry import EnvRef, Registry

pytestmark = pytest.mark.slow


class BackendContract:
    backend_name: str

    def spec(self, extra: str = "") -> str:
        raise NotImplementedError

    @pytest.fixture
    def ref(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> EnvRef:
        monkeypatch.setenv("KMODEL_HOME", str(tmp_path / "home"))
        (tmp_path / "envs").mkdir()
        (tmp_path / "envs" / "e.yaml").write_text(self.spec())
        return Registry(envs=[tmp_path / "envs"]).env("e")

    def backend(self, ref: EnvRef) -> EnvBackend:
        backend = backend_for(ref)
        assert backend.name == self.backend_name
        return backend

    def test_lock_build_noop_damage_rebuild(self, ref: EnvRef, caplog: pytest.LogCaptureFixture,
                                            tmp_path: Path) -> None:
        backend = self.backend(ref)
        with pytest.raises(LockMissingError):
            backend.ensure(ref)
        lockfile = backend.lock(ref)
        assert lockfile == ref.lockfile and "kmodel-spec-sha256:" in lockfile.read_text()
        assert "sha256:" in lockfile.read_text().split("\n", 2)[2]  # every package hashed
        text, mtime = lockfile.read_text(), lockfile.stat().st_mtime_ns
        backend.lock(ref)
        assert lockfile.read_text() == text and lockfile.stat().st_mtime_ns == mtime

        env = backend.ensure(ref)
        assert env.prefix.is_relative_to(tmp_path / "home") and (env.prefix / MARKER).is_file()
        out = subprocess.run([env.python, "-c", "import sys; print(sys.prefix)"],
                             capture_output=True, text=True, check=True).stdout.strip()
        assert out == str(env.prefix)
        status = backend.status(ref)
        assert status.locked and status.built and not status.drift and not status.stale

        built = env.prefix.resolve()
        before = (os.stat(built).st_ino, (built / MARKER).stat().st_mtime_ns,
                  sorted(built.parent.iterdir()))
        assert backend.ensure(ref) == env  # a no-op: the same build, untouched, none added
        assert (os.stat(built).st_ino, (built / MARKER).stat().st_mtime_ns,
                sorted(built.parent.iterdir())) == before

        env.python.unlink()
        assert not backend.status(ref).built
        with caplog.at_level(logging.WARNING, logger="kmodel"):
            again = backend.ensure(ref)
        assert "damaged (python missing)" in caplog.text
        assert again.prefix == env.prefix and again.python.exists()

    def test_drift_makes_the_lock_stale(self, ref: EnvRef) -> None:
        backend = self.backend(ref)
        backend.lock(ref)
        ref.path.write_text(self.spec(extra="# changed\n"))
        assert backend.status(ref).drift and backend.status(ref).stale
        with pytest.raises(LockStaleError):
            backend.ensure(ref)


class TestUv(BackendContract):
    backend_name = "uv"

    def spec(self, extra: str = "") -> str:
        return f'python: "3.11"\npip:\n  - numpy>=2.2\n{extra}'


class TestVenv(BackendContract):
    backend_name = "venv"

    @pytest.fixture(autouse=True)
    def _no_uv(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("KMODEL_NO_UV", "1")

    def spec(self, extra: str = "") -> str:
        return f'python: "3.11"\npip:\n  - numpy>=2.2\n{extra}'


class TestConda(BackendContract):
    backend_name = "conda"

    @pytest.fixture(autouse=True)
    def _channel(self, conda_channel: Path) -> None:
        self.channel = conda_channel

    def spec(self, extra: str = "") -> str:
        return (f"channels: [{self.channel}]\ndependencies:\n  - python\n  - kmtest-a\n"
                f"{extra}")
