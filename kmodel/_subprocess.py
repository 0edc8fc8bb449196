"""The one place kmodel starts processes: logs the command, captures output, maps failures."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from kmodel.errors import Interrupted, KmodelError, ToolMissingError, signum_of

log = logging.getLogger("kmodel")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGKILL when kmodel dies (killed job, pre-empted node), so no
    orphaned installer or runner keeps writing into a half-made env or output."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


_PREEXEC = _die_with_parent if sys.platform == "linux" else None


def run(cmd: Sequence[str | Path], *, env: Mapping[str, str] | None = None,
        cwd: Path | None = None, error: Callable[[str], KmodelError] | None = None,
        timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` to completion, capturing output.

    On a non-zero exit raise ``error(last lines of stderr)`` (a KmodelError);
    on Ctrl-C or SIGTERM the child is stopped and Interrupted is raised.
    """
    argv = [str(c) for c in cmd]
    log.debug("$ %s", shlex.join(argv))
    try:
        proc = subprocess.run(argv, env=dict(env) if env is not None else None, cwd=cwd,
                              capture_output=True, text=True, timeout=timeout,
                              preexec_fn=_PREEXEC)
    except KeyboardInterrupt as e:
        raise Interrupted(signum_of(e)) from None
    except FileNotFoundError as e:
        raise ToolMissingError(f"cannot run {argv[0]}: {e.strerror}; is it installed?") from None
    if proc.returncode != 0 and error is not None:
        out = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        tail = " | ".join(line.strip() for line in out[-3:]) or f"exit code {proc.returncode}"
        raise error(tail)
    return proc


def popen(cmd: Sequence[str | Path], *, env: Mapping[str, str] | None = None,
          stdin: int | None = subprocess.DEVNULL, stdout: int | None = subprocess.PIPE,
          stderr: int | None = subprocess.PIPE, pass_fds: Sequence[int] = (),
          die_with_parent: bool = True) -> subprocess.Popen[Any]:
    """Start ``cmd`` in its own process group (so Ctrl-C handling stays with kmodel).

    Output pipes are binary: read them with :class:`Tail`, which keeps a bounded tail.
    """
    argv = [str(c) for c in cmd]
    log.debug("$ %s", shlex.join(argv))
    return subprocess.Popen(argv, env=dict(env) if env is not None else None, stdin=stdin,
                            stdout=stdout, stderr=stderr, pass_fds=tuple(pass_fds),
                            start_new_session=True,
                            preexec_fn=_PREEXEC if die_with_parent else None)


class Tail:
    """The last ``limit`` bytes of a child's output, read in a thread: a model that writes
    300 MB of logs costs 64 KB of memory here, and never blocks on a full pipe. Every chunk
    also goes, as it comes, to each of ``copies`` (a log file, kmodel's stderr), closed
    when the child closes its output; a copy that fails to write is dropped."""

    def __init__(self, stream: IO[bytes], limit: int = 64 * 1024,
                 copies: Sequence[Any] = ()) -> None:
        self.data = bytearray()
        self.limit = limit
        self.copies = list(copies)
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        fd = stream.fileno()
        try:
            while chunk := os.read(fd, 1 << 16):
                self.data += chunk
                if len(self.data) > 2 * self.limit:
                    del self.data[: len(self.data) - self.limit]
                for copy in list(self.copies):
                    try:
                        copy.write(chunk)
                        copy.flush()
                    except (OSError, ValueError):
                        self.copies.remove(copy)
        finally:
            for copy in self.copies:
                with contextlib.suppress(OSError, ValueError):
                    copy.close()

    def text(self, timeout: float = 2.0) -> str:
        """What was read (the last ``limit`` bytes), once the writer closed the pipe or after
        ``timeout`` (a grandchild may keep it open)."""
        self.thread.join(timeout)
        return bytes(self.data[-self.limit:]).decode("utf-8", "replace")


def stop(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """Terminate a child started with popen(), then kill it if it does not exit."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass
