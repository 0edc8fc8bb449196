"""The env backend interface and the build protocol every backend shares.

An env's identity is a key derived from its lockfile (see ``EnvBackend.key``). Built envs
are reached as ``KMODEL_HOME/envs/<name>-<key[:16]>``, a symlink to the folder the env was
built in (``envs/.builds/...``), made only after the build and its completion marker.
Creation happens under a file lock, so parallel jobs build an env once, and a build killed
half-way (no link) or damaged later (no python) is rebuilt.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic

from kmodel import _lock, formats
from kmodel._fs import (
    atomic_write_text,
    home_error,
    home_folder,
    kmodel_home,
    sha256_file,
    share_tree,
    tmp_sibling,
)
from kmodel.errors import (
    EnvBuildError,
    KmodelError,
    LockMissingError,
    LockStaleError,
)
from kmodel.registry import EnvRef, S

log = logging.getLogger("kmodel")
MARKER = ".kmodel-env.json"
SPEC_HASH_TAG = "kmodel-spec-sha256:"


def build_folder(prefix: Path) -> Path:
    """A new folder to build the env named by ``prefix`` in (unique to this process)."""
    return prefix.parent / ".builds" / f"{prefix.name}-{os.getpid()}-{os.urandom(3).hex()}"


def prefix_of_build(build: Path) -> Path:
    """The env name (``KMODEL_HOME/envs/<name>-<key>``) a build folder was made for: the
    inverse of ``build_folder``."""
    return build.parent.parent / build.name.rsplit("-", 2)[0]


def read_marker(build: Path) -> dict[str, Any] | None:
    """A build's completion marker (an ``env-marker`` document), or None if it has none
    that can be read."""
    try:
        _, marker = formats.read(build / MARKER, "env-marker")
    except (OSError, KmodelError):
        return None
    return marker


def _write_marker(build: Path, marker: dict[str, Any]) -> None:
    """Write the marker atomically; in a group's home it is group-readable before it
    appears (``atomic_path``: a marker the group could not read would look like no
    build at all)."""
    formats.write(build / MARKER, "env-marker", marker)


@dataclass(frozen=True)
class Env:
    """A built environment."""

    name: str
    key: str
    prefix: Path

    @property
    def python(self) -> Path:
        return self.prefix / "bin" / "python"


@dataclass(frozen=True)
class EnvStatus:
    name: str
    backend: str
    locked: bool
    drift: bool  # the spec changed since the lock was written
    built: bool
    prefix: Path | None

    @property
    def stale(self) -> bool:
        return not self.locked or self.drift or not self.built


def _discard(path: Path) -> None:
    """Move a broken env aside, then delete it (a straggler may still be writing into it)."""
    if not path.exists() or path.is_symlink():
        return
    aside = path.with_name(f".{path.name}.discard-{os.getpid()}")
    os.replace(path, aside)
    shutil.rmtree(aside, ignore_errors=True)


def spec_hash(ref: EnvRef[Any]) -> str:
    """sha256 of the env spec file: recorded in the lock to detect drift."""
    return sha256_file(ref.path)


def recorded_spec_hash(lockfile: Path) -> str | None:
    """The spec hash a lockfile was written for (a ``# kmodel-spec-sha256: ...`` comment)."""
    try:
        with open(lockfile, encoding="utf-8") as f:
            for line in f:
                if not line.startswith("#"):
                    break
                if SPEC_HASH_TAG in line:
                    return line.split(SPEC_HASH_TAG, 1)[1].strip()
    except UnicodeDecodeError:
        return "unreadable"  # never equal to a spec hash: reported as stale, relock fixes it
    return None


class EnvBackend(ABC, Generic[S]):
    """How one kind of environment is locked and built (``S``: the env spec type it takes)."""

    name: str

    @abstractmethod
    def lock(self, ref: EnvRef[S]) -> Path:
        """Resolve the spec and write its lockfile (atomically) next to it."""

    @abstractmethod
    def _build(self, ref: EnvRef[S], prefix: Path) -> None:
        """Create the env at ``prefix`` (which does not exist) from the lockfile."""

    def key(self, ref: EnvRef[S], fresh: bool = True) -> str:
        """The env's identity: sha256 of its lockfile (backends may add more). With
        ``fresh=False`` a lockfile older than its spec still gives a key (`env gc` keeps
        the build such a lock names)."""
        return sha256_file(self.checked_lockfile(ref) if fresh else ref.lockfile)

    # -- shared protocol ------------------------------------------------------------

    def checked_lockfile(self, ref: EnvRef[S]) -> Path:
        if not ref.lockfile.is_file():
            raise LockMissingError(ref.name, ref.lockfile)
        if recorded_spec_hash(ref.lockfile) not in (None, spec_hash(ref)):
            raise LockStaleError(ref.name, ref.path, ref.lockfile)
        return ref.lockfile

    def prefix(self, ref: EnvRef[S], key: str | None = None) -> Path:
        return kmodel_home() / "envs" / f"{ref.name}-{(key or self.key(ref))[:16]}"

    def is_built(self, prefix: Path, key: str) -> bool:
        return self._marker(prefix, key) is not None

    def _marker(self, prefix: Path, key: str) -> dict[str, Any] | None:
        """The completion marker of the build at ``prefix`` if it is built with ``key``."""
        marker = read_marker(prefix)
        ok = marker is not None and marker.get("key") == key
        return marker if ok and (prefix / "bin" / "python").exists() else None

    def find(self, ref: EnvRef[S]) -> Env | None:
        """The env if it is built and its lock is current; None otherwise (no error, nothing
        built: ``ensure`` says what is wrong)."""
        try:
            key = self.key(ref)
        except (KmodelError, OSError):
            return None
        prefix = self.prefix(ref, key)
        return Env(ref.name, key, prefix) if self.is_built(prefix, key) else None

    def ensure(self, ref: EnvRef[S]) -> Env:
        """Return the built env, building it first if needed (idempotent, concurrency-safe)."""
        key = self.key(ref)
        prefix = self.prefix(ref, key)
        env = Env(ref.name, key, prefix)
        if (marker := self._marker(prefix, key)) is not None:
            _record_user(prefix, marker, ref.lockfile)
            return env
        builds = home_folder("envs", ".builds")
        busy = lambda who: EnvBuildError(  # noqa: E731
            f"env {ref.name!r} is being built by {who} for over an hour; wait, or if that "
            f"process is gone, delete {prefix}.lock")
        try:
            with _lock.held(Path(f"{prefix}.lock"), busy, wait=3600, waiting=lambda who: log.info(
                    "waiting for %s, which is building env %s", who, ref.name)):
                return self._build_locked(ref, key, prefix, builds)
        except PermissionError as e:
            raise home_error(kmodel_home(), e) from None

    def _build_locked(self, ref: EnvRef[S], key: str, prefix: Path, builds: Path) -> Env:
        """Build the env (called holding its lock); a no-op if another process just did."""
        env = Env(ref.name, key, prefix)
        if self.is_built(prefix, key):  # another process built it while we waited
            return env
        leftovers = sorted(builds.glob(f"{prefix.name}-*"))
        if prefix.is_symlink() or prefix.exists() or leftovers:
            why = "damaged (python missing)" if (prefix / MARKER).exists() else \
                "left incomplete by an interrupted build"
            log.warning("env %s at %s is %s; rebuilding", ref.name, prefix, why)
            if prefix.is_symlink():
                prefix.unlink()
            for old in [*leftovers, prefix]:
                _discard(old)
        # Build in a folder of its own, then point the env's name at it (last step):
        # stragglers of a killed build (uv's bytecode compilers outlive uv) can only
        # ever write into their own, abandoned folder.
        target = build_folder(prefix)
        log.info("creating env %s (%s) at %s", ref.name, self.name, prefix)
        t0 = time.perf_counter()
        try:
            self._build(ref, target)
            _write_marker(target, {"name": ref.name, "key": key, "backend": self.name,
                                   "lockfile": str(ref.lockfile.absolute()),
                                   "created": time.time()})
            share_tree(target)  # a group's home: the group may use it, record in it, gc it
            link = tmp_sibling(prefix, "link")
            link.symlink_to(Path(".builds") / target.name)
            os.replace(link, prefix)
        except BaseException:
            _discard(target)
            raise
        log.info("created env %s in %.1f s", ref.name, time.perf_counter() - t0)
        return env

    def status(self, ref: EnvRef[S]) -> EnvStatus:
        locked = ref.lockfile.is_file()
        drift = locked and recorded_spec_hash(ref.lockfile) not in (None, spec_hash(ref))
        prefix = built = None
        if locked and not drift:
            key = self.key(ref)
            prefix = self.prefix(ref, key)
            built = self.is_built(prefix, key)
        return EnvStatus(ref.name, self.name, locked, bool(drift), bool(built),
                         prefix if built else None)


def _record_user(prefix: Path, marker: dict[str, Any], lockfile: Path) -> None:
    """Add ``lockfile`` to the lockfiles the build's marker names (once per lockfile), so
    that `env gc` keeps a build that several projects share. Best effort: a build in a
    read-only KMODEL_HOME is still used."""
    path = str(lockfile.absolute())
    users = [marker.get("lockfile"), *marker.get("lockfiles", [])]
    if path in users:
        return
    with contextlib.suppress(OSError, KmodelError):
        _write_marker(prefix.resolve(), {**marker,
                                         "lockfiles": [*marker.get("lockfiles", []), path]})


def write_lock(ref: EnvRef[Any], text: str) -> Path:
    """Write a lockfile atomically, leaving it untouched (mtime too) when nothing changed,
    so re-locking an unchanged spec rebuilds no env and reruns no workflow job."""
    try:
        if ref.lockfile.read_text(encoding="utf-8") == text:
            return ref.lockfile
    except (OSError, UnicodeDecodeError):
        pass
    atomic_write_text(ref.lockfile, text)
    return ref.lockfile


def header(ref: EnvRef[Any], tool: str) -> str:
    """Comment lines every kmodel lockfile starts with."""
    return (f"# Locked by kmodel with {tool} from {ref.path.name}; do not edit.\n"
            f"# {SPEC_HASH_TAG} {spec_hash(ref)}\n")


__all__ = ["Env", "EnvBackend", "EnvStatus", "header", "write_lock"]
