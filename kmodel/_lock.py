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
from collections.abc import Callable, Iterator
from pathlib import Path

from kmodel.errors import KmodelError

log = logging.getLogger("kmodel")


def lock_path(target: Path) -> Path:
    return target.with_name(target.name + ".lock")


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

    lease = float(os.environ.get("KMODEL_LOCK_LEASE", "120"))
    lock = SoftFileLease(str(path), lease_duration=lease, poll_interval=0.05)
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
    except OSError:
        raise  # the folder is not writable, or full: the caller says which file
    except Exception as e:  # e.g. a lease written with another duration: treat as held
        raise busy(f"{holder(path)} ({e})") from None
    try:
        yield
    finally:
        lock.release()
