"""Locks kmodel owns: one writer per output, one builder per env, one `kmodel run` per folder.

HDF5's own file locking cannot be relied on: clusters set HDF5_USE_FILE_LOCKING=FALSE
(NFS, Lustre), and fcntl locks are not honoured by every shared filesystem. A lock here is
a file created with O_EXCL (atomic on NFS too) naming its holder (pid, host, process start
time), refreshed by a heartbeat while held (filelock's SoftFileLease). A lock whose holder
is provably dead (same host, pid gone or reused) is taken over at once; one from another
host is taken over when its heartbeat is older than the lease (KMODEL_LOCK_LEASE seconds,
default 120), e.g. after a node was lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from kmodel._fs import share
from kmodel.errors import KmodelError, OutputNotWritableError, UsageError

log = logging.getLogger("kmodel")


def lease_seconds() -> float:
    """KMODEL_LOCK_LEASE: seconds without a heartbeat after which another host's lock is
    taken over (default 120)."""
    raw = os.environ.get("KMODEL_LOCK_LEASE", "120")
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 5 <= value <= 86400:
        raise UsageError(f"KMODEL_LOCK_LEASE={raw!r} is not a number of seconds from 5 to "
                         "86400; unset it (default 120) or fix it")
    return value


def _foreign(path: Path) -> bool:
    """Something at the lock's name that no kmodel wrote: not a regular file (a FIFO would
    block the reader), or a file whose content is not a lock's (an empty one only when it
    is older than a lock being written right now). Never taken over, so never deleted."""
    try:
        st = path.lstat()
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode):
        return True
    try:
        with open(path, "rb") as f:
            text = f.read(4096).decode(errors="replace")
    except OSError:
        return False
    if text:
        return not text.startswith("filelock/") or "pid=" not in text
    return time.time() - st.st_mtime > 5


def lock_path(target: Path) -> Path:
    return target.with_name(target.name + ".lock")


def writer_busy(output: Path) -> Callable[[str], KmodelError]:
    """The error for an output that another kmodel run is writing."""
    return lambda who: OutputNotWritableError(
        output, f"another kmodel run ({who}) is writing it",
        "wait for it to finish or choose another output")


@contextlib.contextmanager
def writing(output: Path) -> Iterator[None]:
    """Hold ``output``'s lock (``OUT.lock``) for the block: one writer at a time."""
    with held(lock_path(output), writer_busy(output)):
        yield


def holder(path: Path) -> str:
    """Who holds the lock at ``path``, in words (from its marker)."""
    try:
        fields = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    except (OSError, ValueError):
        return "another process"
    if "pid" in fields:
        return f"pid {fields['pid']} on {fields.get('host', '?')}"
    return "another process"


@contextlib.contextmanager
def held(path: Path, busy: Callable[[str], KmodelError], *, wait: float = 0.0,
         waiting: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the lock file ``path`` for the block.

    If another live process holds it, wait up to ``wait`` seconds (calling ``waiting`` once
    with who holds it), then raise ``busy(holder)``.
    """
    from filelock import SoftFileLease, Timeout  # a few ms: imported only where needed

    if _foreign(path):
        raise OutputNotWritableError(path, "it exists and is not a kmodel lock (a file of "
                                     "yours?), so no kmodel run can hold it",
                                     "rename or remove it")
    lock = SoftFileLease(str(path), lease_duration=lease_seconds(), poll_interval=0.05)
    try:
        try:
            lock.acquire(timeout=0.3)  # a dead holder's lock is taken over in one poll
        except Timeout:
            if wait <= 0:
                raise
            if waiting:
                waiting(holder(path))
            lock.acquire(timeout=wait)
    except Timeout:
        raise busy(holder(path)) from None
    except OSError as e:
        if e.filename is None:
            e.filename = str(path)
        raise  # the folder is not writable, or full: the error names the lock file
    except Exception as e:  # e.g. a lease written with another duration: treat as held
        raise busy(f"{holder(path)} ({e})") from None
    try:
        share(path, writable=True)  # in a group's KMODEL_HOME: the group reads and breaks it
        yield
    finally:
        lock.release()
