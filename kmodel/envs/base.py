"""The env backend interface and the build protocol every backend shares.

An env's identity is a key derived from its lockfile (see ``EnvBackend.key``). Built envs
live in ``KMODEL_HOME/envs/<name>-<key[:16]>``; a completion marker is written last and
creation happens under a file lock, so parallel jobs build an env once, and a build killed
half-way (no marker) or damaged later (no python) is rebuilt.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from kmodel._fs import atomic_write_text, kmodel_home, sha256_bytes, sha256_file
from kmodel.errors import LockMissingError, LockStaleError
from kmodel.registry import EnvRef

log = logging.getLogger("kmodel")
MARKER = ".kmodel-env.json"
SPEC_HASH_TAG = "kmodel-spec-sha256:"


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


def _discard(prefix: Path) -> None:
    """Move a broken env aside, then delete it: a straggler of a killed build (an installer's
    bytecode compiler, say) may still be writing into it."""
    if not prefix.exists():
        return
    aside = prefix.with_name(f".{prefix.name}.discard-{os.getpid()}")
    os.replace(prefix, aside)
    shutil.rmtree(aside, ignore_errors=True)


def spec_hash(ref: EnvRef) -> str:
    """sha256 of the env spec file: recorded in the lock to detect drift."""
    return sha256_file(ref.path)


def recorded_spec_hash(lockfile: Path) -> str | None:
    """The spec hash a lockfile was written for (a ``# kmodel-spec-sha256: ...`` comment)."""
    with open(lockfile, encoding="utf-8") as f:
        for line in f:
            if not line.startswith("#"):
                break
            if SPEC_HASH_TAG in line:
                return line.split(SPEC_HASH_TAG, 1)[1].strip()
    return None


class EnvBackend(ABC):
    """How one kind of environment is locked and built."""

    name: str

    @abstractmethod
    def lock(self, ref: EnvRef) -> Path:
        """Resolve the spec and write its lockfile (atomically) next to it."""

    @abstractmethod
    def _build(self, ref: EnvRef, prefix: Path) -> None:
        """Create the env at ``prefix`` (which does not exist) from the lockfile."""

    def key(self, ref: EnvRef) -> str:
        """The env's identity: sha256 of its lockfile (backends may add more)."""
        return sha256_file(self.checked_lockfile(ref))

    # -- shared protocol ------------------------------------------------------------

    def checked_lockfile(self, ref: EnvRef) -> Path:
        if not ref.lockfile.is_file():
            raise LockMissingError(ref.name, ref.lockfile)
        if recorded_spec_hash(ref.lockfile) not in (None, spec_hash(ref)):
            raise LockStaleError(ref.name, ref.path, ref.lockfile)
        return ref.lockfile

    def prefix(self, ref: EnvRef, key: str | None = None) -> Path:
        return kmodel_home() / "envs" / f"{ref.name}-{(key or self.key(ref))[:16]}"

    def is_built(self, prefix: Path, key: str) -> bool:
        marker = prefix / MARKER
        try:
            ok = json.loads(marker.read_text()).get("key") == key
        except (OSError, ValueError):
            return False
        return ok and (prefix / "bin" / "python").exists()

    def is_ready(self, ref: EnvRef) -> bool:
        """Built and complete: ensure() would return at once."""
        key = self.key(ref)
        return self.is_built(self.prefix(ref, key), key)

    def ensure(self, ref: EnvRef) -> Env:
        """Return the built env, building it first if needed (idempotent, concurrency-safe)."""
        key = self.key(ref)
        prefix = self.prefix(ref, key)
        env = Env(ref.name, key, prefix)
        if self.is_built(prefix, key):
            return env
        from filelock import FileLock  # only when building: keeps `kmodel predict` start-up short

        prefix.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(prefix) + ".lock"):
            if self.is_built(prefix, key):  # another process built it while we waited
                return env
            if prefix.exists():
                why = "damaged (python missing)" if (prefix / MARKER).exists() else \
                    "left incomplete by an interrupted build"
                log.warning("env %s at %s is %s; rebuilding", ref.name, prefix, why)
                _discard(prefix)
            log.info("creating env %s (%s) at %s", ref.name, self.name, prefix)
            t0 = time.perf_counter()
            try:
                self._build(ref, prefix)
            except BaseException:
                _discard(prefix)
                raise
            atomic_write_text(prefix / MARKER, json.dumps(
                {"name": ref.name, "key": key, "backend": self.name,
                 "lockfile": str(ref.lockfile.absolute()), "created": time.time()}))
            log.info("created env %s in %.1f s", ref.name, time.perf_counter() - t0)
        return env

    def status(self, ref: EnvRef) -> EnvStatus:
        locked = ref.lockfile.is_file()
        drift = locked and recorded_spec_hash(ref.lockfile) not in (None, spec_hash(ref))
        prefix = built = None
        if locked and not drift:
            key = self.key(ref)
            prefix = self.prefix(ref, key)
            built = self.is_built(prefix, key)
        return EnvStatus(ref.name, self.name, locked, bool(drift), bool(built),
                         prefix if built else None)

    def remove(self, env: Env) -> None:
        shutil.rmtree(env.prefix, ignore_errors=True)


def header(ref: EnvRef, tool: str) -> str:
    """Comment lines every kmodel lockfile starts with."""
    return (f"# Locked by kmodel with {tool} from {ref.path.name}; do not edit.\n"
            f"# {SPEC_HASH_TAG} {spec_hash(ref)}\n")


__all__ = ["Env", "EnvBackend", "EnvStatus", "header", "sha256_bytes"]
