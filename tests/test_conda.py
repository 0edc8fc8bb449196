"""The conda backend (py-rattler), against a local file:// channel built once per session."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
import warnings
from pathlib import Path

import pytest
import rattler

from kmodel.envs import backend_for
from kmodel.envs.base import SPEC_HASH_TAG
from kmodel.envs.conda import CondaBackend, channel_url, current_platform
from kmodel.errors import (
    ChannelUnreachableError,
    EnvBuildError,
    LockResolveError,
    LockStaleError,
)
from kmodel.registry import EnvRef, Registry

from .conda_channel import PY_VER

with warnings.catch_warnings():  # conda_lock's vendored conda warns on import
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", PendingDeprecationWarning)
    from conda_lock.lockfile import parse_conda_lock_file

pytestmark = pytest.mark.skipif(current_platform() != "linux-64",
                                reason="the test channel repackages a linux-64 python")


@pytest.fixture
def channel(conda_channel: Path) -> Path:
    return conda_channel


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("KMODEL_HOME", str(home))
    for var in ("KMODEL_CONDA_EXE", "KMODEL_CONDA_CHANNEL_ALIAS", "KMODEL_CONDA_MIRRORS"):
        monkeypatch.delenv(var, raising=False)
    return home


def env_ref(tmp_path: Path, name: str, text: str) -> EnvRef:
    envs = tmp_path / "envs"
    envs.mkdir(exist_ok=True)
    (envs / f"{name}.yaml").write_text(text)
    return Registry(envs=[envs]).env(name)


def spec(channel: Path | str, *deps: str, platforms: list[str] | None = None,
         pip: list[str] | None = None) -> str:
    lines = [f"channels: [{channel}]"]
    if platforms:
        lines.append(f"platforms: [{', '.join(platforms)}]")
    lines.append("dependencies:")
    lines += [f"  - {d}" for d in deps]
    if pip:
        lines.append("  - pip:")
        lines += [f"    - {p}" for p in pip]
    return "\n".join(lines) + "\n"


def repodata(channel: Path) -> dict[str, dict[str, str]]:
    """file name -> repodata entry, over all subdirs."""
    found = {}
    for sub in ("noarch", "linux-64", "osx-arm64"):
        data = json.loads((channel / sub / "repodata.json").read_text())
        found.update(data["packages.conda"])
    return found


# --- lock ----------------------------------------------------------------------------


def test_lock_round_trip(tmp_path: Path, home: Path, channel: Path) -> None:
    ref = env_ref(tmp_path, "small", spec(channel, "kmtest-a"))
    assert isinstance(backend_for(ref), CondaBackend)
    t0 = time.perf_counter()
    lockfile = CondaBackend().lock(ref)
    print(f"lock: {time.perf_counter() - t0:.2f} s")
    assert lockfile == tmp_path / "envs" / "small.conda-lock.yml"
    head = lockfile.read_text().splitlines()
    assert head[0].startswith("# Locked by kmodel with py-rattler from small.yaml")
    assert SPEC_HASH_TAG in head[1]

    env = rattler.LockFile.from_path(lockfile).default_environment()
    assert env is not None
    [plat] = env.platforms()
    assert str(plat) == "linux-64"
    ours = {r.name.normalized: r for r in env.conda_repodata_records_for_platform(plat) or []}
    assert set(ours) == {"kmtest-a", "kmtest-b"}
    assert str(ours["kmtest-b"].version) == "2.0"  # the highest that fits

    theirs = {p.name: p for p in parse_conda_lock_file(lockfile).package}
    assert set(theirs) == set(ours)
    index = repodata(channel)
    for name, rec in ours.items():
        assert theirs[name].manager == "conda"
        assert theirs[name].url == rec.url
        assert theirs[name].hash.sha256 == rec.sha256.hex() == index[rec.file_name]["sha256"]
        assert theirs[name].hash.md5 == rec.md5.hex() == index[rec.file_name]["md5"]
    assert theirs["kmtest-a"].dependencies == {"kmtest-b": ">=1.0"}


def test_lock_multi_platform(tmp_path: Path, home: Path, channel: Path) -> None:
    ref = env_ref(tmp_path, "multi", spec(channel, "kmtest-a", "kmtest-c",
                                          platforms=["linux-64", "osx-arm64"]))
    lockfile = CondaBackend().lock(ref)
    env = rattler.LockFile.from_path(lockfile).default_environment()
    assert env is not None
    by_plat = {str(p): env.conda_repodata_records_for_platform(p) or []
               for p in env.platforms()}
    assert set(by_plat) == {"linux-64", "osx-arm64"}
    for plat, records in by_plat.items():
        names = {r.name.normalized: r for r in records}
        assert set(names) == {"kmtest-a", "kmtest-b", "kmtest-c"}
        assert f"/{plat}/kmtest-c-0.1-0.conda" in names["kmtest-c"].url
        assert str(names["kmtest-b"].version) == "1.0"  # kmtest-c needs kmtest-b <2
    parsed = parse_conda_lock_file(lockfile)
    assert sorted(parsed.metadata.platforms) == ["linux-64", "osx-arm64"]
    assert {p.platform for p in parsed.package} == {"linux-64", "osx-arm64"}


def test_drift(tmp_path: Path, home: Path, channel: Path) -> None:
    ref = env_ref(tmp_path, "drifty", spec(channel, "kmtest-a"))
    backend = CondaBackend()
    assert not backend.status(ref).locked
    backend.lock(ref)
    st = backend.status(ref)
    assert st.locked and not st.drift
    ref.path.write_text(spec(channel, "kmtest-a", "kmtest-c"))
    st = backend.status(ref)
    assert st.drift and st.stale
    with pytest.raises(LockStaleError):
        backend.ensure(ref)


def test_unreachable_channel_fails_fast(tmp_path: Path, home: Path) -> None:
    url = "http://127.0.0.1:9/nothing"
    ref = env_ref(tmp_path, "offline", spec(url, "python"))
    with pytest.raises(ChannelUnreachableError) as err:  # from the channel check, before
        CondaBackend().lock(ref)  # any solve or download: so at once, whatever the machine
    assert url in str(err.value)
    assert not ref.lockfile.exists()


def test_missing_local_channel(tmp_path: Path, home: Path) -> None:
    ref = env_ref(tmp_path, "nochan", spec(tmp_path / "no-such-channel", "python"))
    with pytest.raises(ChannelUnreachableError, match="no-such-channel"):
        CondaBackend().lock(ref)


def test_unsatisfiable_spec(tmp_path: Path, home: Path, channel: Path) -> None:
    ref = env_ref(tmp_path, "unsat", spec(channel, "kmtest-a >=5"))
    with pytest.raises(LockResolveError, match="unsat"):
        CondaBackend().lock(ref)


def test_pip_section_needs_python(tmp_path: Path, home: Path, channel: Path) -> None:
    ref = env_ref(tmp_path, "nopy", spec(channel, "kmtest-a", pip=["numpy"]))
    with pytest.raises(LockResolveError, match="python"):
        CondaBackend().lock(ref)


def test_channel_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KMODEL_CONDA_CHANNEL_ALIAS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("CONDARC", raising=False)
    default = str(rattler.Channel("conda-forge").base_url).rstrip("/")
    assert channel_url("conda-forge") == default
    (tmp_path / ".condarc").write_text("channel_alias: https://conda-mirror.example/\n")
    assert channel_url("conda-forge") == "https://conda-mirror.example/conda-forge"
    monkeypatch.setenv("KMODEL_CONDA_CHANNEL_ALIAS", "https://mirror.example/conda/")
    assert channel_url("bioconda") == "https://mirror.example/conda/bioconda"
    assert channel_url("file:///srv/chan/") == "file:///srv/chan"
    assert channel_url("/srv/chan") == "file:///srv/chan"


# --- build -----------------------------------------------------------------------------


def test_ensure_python_env(tmp_path: Path, home: Path, channel: Path) -> None:
    ref = env_ref(tmp_path, "py", spec(channel, "python", "kmtest-a"))
    backend = CondaBackend()
    backend.lock(ref)
    t0 = time.perf_counter()
    env = backend.ensure(ref)
    print(f"cold create (python, no pip section): {time.perf_counter() - t0:.2f} s")
    assert env.prefix.is_relative_to(home)
    assert (env.prefix / "share" / "kmtest" / "a.txt").read_text() == "a 1.0\n"
    out = subprocess.run([env.python, "-c", "import platform, sys, sysconfig; "
                          "print(platform.python_version()); print(sys.prefix); "
                          "print(sysconfig.get_config_var('prefix'))"],
                         capture_output=True, text=True, check=True).stdout.split()
    # the host's python, relocated: its prefix placeholders were replaced by the folder the
    # env was built in (env.prefix is a link to it)
    assert out == [PY_VER, str(env.prefix), str(env.prefix.resolve())]
    assert backend.status(ref).built


def test_conda_exe_is_used_only_when_set(tmp_path: Path, home: Path, channel: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    ref = env_ref(tmp_path, "exe", spec(channel, "kmtest-a"))
    backend = CondaBackend()
    backend.lock(ref)
    fake = tmp_path / "fake-conda"
    fake.write_text("#!/bin/sh\n# fake conda: create --yes --prefix P --file F\n"
                    'mkdir -p "$4/bin" && cp "$6" "$4/explicit.txt" && '
                    'ln -s /bin/true "$4/bin/python"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("KMODEL_CONDA_EXE", str(fake))
    env = backend.ensure(ref)
    explicit = (env.prefix / "explicit.txt").read_text().splitlines()
    assert explicit[0] == "@EXPLICIT"
    assert any("kmtest-a-1.0-0.conda#" in line for line in explicit)

    fake.write_text("#!/bin/sh\necho 'solver exploded' >&2\nexit 3\n")
    ref.path.write_text(ref.path.read_text() + "# changed\n")
    backend.lock(ref)
    with pytest.raises(EnvBuildError, match="solver exploded"):
        backend.ensure(ref)


@pytest.mark.slow
def test_end_to_end_python_pip_numpy_h5py(tmp_path: Path, home: Path, channel: Path) -> None:
    ref = env_ref(tmp_path, "full", spec(channel, "python", "pip", pip=["numpy", "h5py"]))
    backend = CondaBackend()
    t0 = time.perf_counter()
    backend.lock(ref)
    t_lock = time.perf_counter() - t0
    pips = {p.name: p for p in parse_conda_lock_file(ref.lockfile).package
            if p.manager == "pip"}
    assert {"numpy", "h5py"} <= set(pips)
    assert all(p.hash.sha256 and p.url for p in pips.values())

    t0 = time.perf_counter()
    env = backend.ensure(ref)
    t_cold = time.perf_counter() - t0
    done = subprocess.run([env.python, "-c", "import numpy, h5py, sys; print(sys.prefix)"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(env.prefix)
    assert subprocess.run([env.prefix / "bin" / "pip", "--version"],
                          capture_output=True).returncode == 0

    marker = (env.prefix / ".kmodel-env.json").stat().st_mtime_ns
    t0 = time.perf_counter()
    again = backend.ensure(ref)
    t_warm = time.perf_counter() - t0
    assert again.prefix == env.prefix
    assert (env.prefix / ".kmodel-env.json").stat().st_mtime_ns == marker
    assert t_warm < 1.0
    print(f"lock {t_lock:.2f} s, cold create {t_cold:.2f} s, warm {t_warm * 1000:.1f} ms")
    assert os.access(env.python, os.X_OK)
