"""The one place kmodel starts processes: logs the command, captures output, maps failures."""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from kmodel.errors import Interrupted, KmodelError, ToolMissingError

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
    on Ctrl-C the child is stopped and Interrupted is raised.
    """
    argv = [str(c) for c in cmd]
    log.debug("$ %s", shlex.join(argv))
    try:
        proc = subprocess.run(argv, env=dict(env) if env is not None else None, cwd=cwd,
                              capture_output=True, text=True, timeout=timeout,
                              preexec_fn=_PREEXEC)
    except KeyboardInterrupt:
        raise Interrupted() from None
    except FileNotFoundError as e:
        raise ToolMissingError(f"cannot run {argv[0]}: {e.strerror}; is it installed?") from None
    if proc.returncode != 0 and error is not None:
        out = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        tail = " | ".join(line.strip() for line in out[-3:]) or f"exit code {proc.returncode}"
        raise error(tail)
    return proc


def popen(cmd: Sequence[str | Path], *, env: Mapping[str, str] | None = None,
          stdin: int | None = subprocess.DEVNULL, stdout: int | None = subprocess.PIPE,
          stderr: int | None = subprocess.PIPE) -> subprocess.Popen[str]:
    """Start ``cmd`` in its own process group (so Ctrl-C handling stays with kmodel)."""
    argv = [str(c) for c in cmd]
    log.debug("$ %s", shlex.join(argv))
    return subprocess.Popen(argv, env=dict(env) if env is not None else None, stdin=stdin,
                            stdout=stdout, stderr=stderr, text=True, bufsize=1,
                            start_new_session=True, preexec_fn=_PREEXEC)


def stop(proc: subprocess.Popen[str], grace: float = 5.0) -> None:
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
