"""Stops a process group when kmodel dies: ``python -I _reaper.py PGID GRACE`` (stdlib only).

`kmodel run` starts Snakemake in a process group of its own and this reaper beside it,
holding the read end of a pipe that only kmodel writes to. If kmodel ends normally it
writes ``done``; if it is killed outright (SIGKILL, OOM), the pipe closes empty and the
reaper sends SIGTERM to the whole group (Snakemake and its jobs shut down cleanly: jobs
keep their partial files, Snakemake releases its locks), then SIGKILL after GRACE seconds.
"""

from __future__ import annotations

import os
import signal
import sys
import time


def main(argv: list[str]) -> int:
    pgid, grace = int(argv[1]), float(argv[2])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is kmodel's to handle
    if sys.stdin.buffer.read().startswith(b"done"):
        return 0
    try:
        os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            time.sleep(0.2)
            os.killpg(pgid, 0)
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the group is gone
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
