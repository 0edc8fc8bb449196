"""pip-only envs: a hashed lock from ``uv pip compile``, a venv synced with ``uv pip sync``.

``VenvBackend`` is the fallback when uv is absent: stdlib venv + pip, and a hashed lock made
from ``pip install --dry-run --report``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kmodel import _subprocess
from kmodel._fs import cached_sha256, sha256_bytes
from kmodel.envs.base import EnvBackend, header, write_lock
from kmodel.envs.pip_sources import uv_environment
from kmodel.errors import EnvBuildError, KmodelError, LockResolveError, ToolMissingError
from kmodel.registry import EnvRef
from kmodel.spec import PipEnvSpec

#: what the runner itself imports inside every model env
RUNNER_NEEDS = ("numpy", "h5py")


def requirements(spec: PipEnvSpec) -> list[str]:
    """The spec's requirements plus the runner's own needs where the spec omits them."""
    named = {re.split(r"[\s<>=!~\[;@]", r, maxsplit=1)[0].lower() for r in spec.pip}
    return list(spec.pip) + [n for n in RUNNER_NEEDS if n not in named]


_uv_lock = threading.Lock()
_uv_found: list[str | None] = []  # the uv binary, once found


def uv_binary() -> str | None:
    """The uv binary (None: use stdlib venv + pip), found once per process: uv's own
    finder reads sysconfig, whose first use is not thread-safe (threads making a
    process's first predict at once got None for a config variable)."""
    if os.environ.get("KMODEL_NO_UV"):
        return None
    with _uv_lock:
        if not _uv_found:
            _uv_found.append(_find_uv())
        return _uv_found[0]


def _find_uv() -> str | None:
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


def find_python(version: str) -> Path:
    """An interpreter of ``version`` (e.g. "3.11"): this one, or pythonX.Y on PATH."""
    if f"{sys.version_info[0]}.{sys.version_info[1]}" == version:
        base = getattr(sys, "_base_executable", sys.executable)
        return Path(base).resolve()
    if found := shutil.which(f"python{version}"):
        return Path(found).resolve()
    raise ToolMissingError(f"no python {version} found (looked for python{version} on PATH); "
                           "install it or change `python:` in the env spec")


class _PipBackend(EnvBackend[PipEnvSpec]):
    """Shared by uv and venv: lock = resolve the requirements into ``name==version`` lines
    with hashes; identity = the lock plus the base interpreter the venv links to, by what
    it is (its version and the sha256 of its binary), never by the path a user reached it
    by: the users of a group's KMODEL_HOME, each with a venv, a PATH or a mount of their
    own, compute one key for one env."""

    tool: str

    def key(self, ref: EnvRef[PipEnvSpec], fresh: bool = True) -> str:
        return sha256_bytes(f"{super().key(ref, fresh)}|{interpreter_id(ref.spec.python)}"
                            .encode())

    def lock(self, ref: EnvRef[PipEnvSpec]) -> Path:
        python = find_python(ref.spec.python)
        with tempfile.TemporaryDirectory(prefix="kmodel-lock-") as tmp:
            req = Path(tmp) / "requirements.in"
            req.write_text("\n".join(requirements(ref.spec)) + "\n")
            body = self._resolve(python, req, lambda tail: LockResolveError(
                f"cannot lock env {ref.name!r} ({ref.path}): {tail}"))
        return write_lock(ref, header(ref, self.tool) + body)

    def _resolve(self, python: Path, req: Path, fail: Callable[[str], KmodelError]) -> str:
        """The hashed lock's body for the requirements file ``req``."""
        raise NotImplementedError


def interpreter_id(version: str) -> str:
    """What identifies the interpreter a venv of ``version`` is made from: its version and
    the sha256 of its binary (cached by the file's identity: ~10 ms once, then a stat)."""
    return f"python{version}|{cached_sha256(find_python(version))}"


class UvBackend(_PipBackend):
    name, tool = "uv", "uv pip compile"

    def __init__(self, uv: str) -> None:
        self.uv = uv

    def _resolve(self, python: Path, req: Path, fail: Callable[[str], KmodelError]) -> str:
        _subprocess.run(  # relative paths: the lock's "via" notes name no temp folder
            [self.uv, "pip", "compile", "--quiet", "--generate-hashes", "--no-header",
             "--python", python, "--python-platform", "linux", req.name, "-o", "lock.txt"],
            env=uv_environment(), cwd=req.parent, error=fail)
        return (req.parent / "lock.txt").read_text()

    def _build(self, ref: EnvRef[PipEnvSpec], prefix: Path) -> None:
        env = uv_environment()
        fail = lambda tail: EnvBuildError(f"cannot build env {ref.name!r}: {tail}")  # noqa: E731
        _subprocess.run([self.uv, "venv", "--quiet", "--python",
                         find_python(ref.spec.python), prefix], env=env, error=fail)
        _install(ref, [self.uv, "pip", "sync", "--quiet", "--require-hashes", "--python",
                       prefix / "bin" / "python", ref.lockfile], env)


class VenvBackend(_PipBackend):
    """stdlib venv + pip: slower, but needs nothing beyond the interpreter."""

    name, tool = "venv", "pip --dry-run --report"

    def _resolve(self, python: Path, req: Path, fail: Callable[[str], KmodelError]) -> str:
        report = req.parent / "report.json"
        _subprocess.run([python, "-m", "pip", "install", "--quiet", "--dry-run",
                         "--ignore-installed", "--report", report, "-r", req], error=fail)
        lines = []
        items = json.loads(report.read_text())["install"]
        for item in sorted(items, key=lambda i: i["metadata"]["name"].lower()):
            meta, digest = item["metadata"], item["download_info"].get("archive_info", {})
            sha = digest.get("hashes", {}).get("sha256") or digest.get("hash", "=").split("=")[1]
            lines.append(f"{meta['name'].lower()}=={meta['version']} \\\n    --hash=sha256:{sha}")
        return "\n".join(lines) + "\n"

    def _build(self, ref: EnvRef[PipEnvSpec], prefix: Path) -> None:
        fail = lambda tail: EnvBuildError(f"cannot build env {ref.name!r}: {tail}")  # noqa: E731
        _subprocess.run([find_python(ref.spec.python), "-m", "venv", prefix], error=fail)
        _install(ref, [prefix / "bin" / "python", "-m", "pip", "install", "--quiet",
                       "--no-deps", "--require-hashes", "-r", ref.lockfile])


def _install(ref: EnvRef[PipEnvSpec], cmd: list[str | Path],
             env: dict[str, str] | None = None) -> None:
    """Install the lock's packages; a hash mismatch is named as such, other failures by the
    installer's last lines."""
    check_install(ref, _subprocess.run(cmd, env=env), lambda tail: EnvBuildError(
        f"cannot build env {ref.name!r}: {tail}"))


def check_install(ref: EnvRef[Any], proc: subprocess.CompletedProcess[str],
                  fail: Callable[[str], KmodelError]) -> None:
    """An installer's failure as ``hash_mismatch`` names it, else as ``fail(last lines)``."""
    if proc.returncode != 0:
        tail = " | ".join(ln.strip() for ln in proc.stderr.strip().splitlines()[-3:]
                          if ln.strip()) or f"exit code {proc.returncode}"
        raise hash_mismatch(ref, proc.stderr) or fail(tail)


_UV_MISMATCH = re.compile(r"Hash mismatch for `([^`]+)`.*?Expected:\s*(?:sha256:)?(\w+).*?"
                          r"Computed:\s*(?:sha256:)?(\w+)", re.S)
_PIP_MISMATCH = re.compile(r"^\s*(\S+==\S+) from .*?\n\s*Expected sha256 (\w+)\s*\n\s*"
                           r"Got\s+(\w+)", re.M)
#: uv's and pip's words for a hash in the lock that is malformed, or missing
_MALFORMED = re.compile(r"^.*(?:invalid hash|unsupported hash|unexpected hash|hash digest|"
                        r"must have a hash|hashes are required).*$", re.M | re.I)


def hash_mismatch(ref: EnvRef[Any], text: str) -> EnvBuildError | None:
    """A downloaded package whose sha256 is not the lock's, or a hash in the lock that is
    not one: the lock's hash is named as the cause (an edited lock, or a package changed
    since it was locked), with both hashes and the fix; None for other failures."""
    relock = f"relock with `kmodel env lock {ref.name}`"
    if m := _UV_MISMATCH.search(text) or _PIP_MISMATCH.search(text):
        package, expected, found = m.groups()
        return EnvBuildError(
            f"cannot build env {ref.name!r}: {package}: the lock's hash does not match the "
            f"package: {ref.lockfile} says sha256 {expected}, the package downloaded has "
            f"sha256 {found}; the lock was edited or the package changed since it was "
            f"locked: {relock}")
    if m := _MALFORMED.search(text):
        words = m.group(0).strip().removeprefix("error:").strip()
        return EnvBuildError(f"cannot build env {ref.name!r}: {ref.lockfile} holds a hash "
                             f"that is malformed or missing ({words}); the lock was edited: "
                             f"{relock}")
    return None
