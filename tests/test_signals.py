"""A signal at any moment of a command is answered in one line (exit 128 + the signal, or
the command's own exit if it had finished), never with a traceback.

The moments are sampled, but nothing is raced: whichever moment a signal lands on, the
same must hold. Sampling starts once kmodel's own handler is in place (the process catches
SIGTERM, which the bare interpreter does not: a barrier read from /proc), because the
interpreter's first milliseconds, before any kmodel code runs, are CPython's."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from .conftest import make_input, wait_for

KMODEL = [sys.executable, "-m", "kmodel"]
HANG = 180  # seconds: a guard against a hang, never a deadline
DELAYS = (0.0, 0.01, 0.03, 0.06, 0.1, 0.15, 0.25, 0.4, 0.7, 1.2)


def _kmodel_handles_signals(pid: int) -> bool:
    """The process catches SIGTERM: kmodel/_signals.py's handler is installed."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True  # gone already: nothing left to wait for
    caught = next(int(ln.split()[1], 16) for ln in status.splitlines()
                  if ln.startswith("SigCgt:"))
    return bool(caught & (1 << (signal.SIGTERM - 1)))


def _interrupted(args: list[str], delay: float, signum: int, cwd: Path
                 ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen([*KMODEL, *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for(lambda: _kmodel_handles_signals(proc.pid), timeout=HANG)
    time.sleep(delay)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=HANG)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux's /proc")
def test_a_signal_at_any_moment_gives_one_line_and_no_traceback(project: Path) -> None:
    make_input(project / "in.h5", rows=2000, targets=np.random.default_rng(0).normal(size=2000))
    for name in ("a", "b"):
        res = subprocess.run([*KMODEL, "predict", "toy", "-i", "in.h5", "-o", f"{name}.h5"],
                             cwd=project, capture_output=True, text=True, timeout=HANG)
        assert res.returncode == 0, res.stderr
    commands = {
        "compose": ["compose", "train", "--targets", "in.h5", "--stacking", "in-sample",
                    "--output-of", "toy=y", "-o", "w", "--", "stacker", "a.h5", "b.h5"],
        "predict": ["predict", "toy", "-i", "in.h5", "-o", "p.h5"],
        "ls": ["ls"],
    }
    seen: dict[int, int] = {}
    for what, args in commands.items():
        for k, delay in enumerate(DELAYS):
            signum = signal.SIGINT if k % 2 == 0 else signal.SIGTERM
            res = _interrupted(args, delay, signum, project)
            said = res.stderr.strip().splitlines()
            assert "Traceback" not in res.stderr and "Exception" not in res.stderr, \
                (what, delay, res.stderr[-2000:])
            # (-signum: it came as the interpreter's last step restored the default action)
            assert res.returncode in (0, 128 + signum, -signum), \
                (what, delay, res.returncode, said)
            if res.returncode > 0:
                assert said[-1].startswith("Error [KM800]: interrupted by "), (what, said)
            seen[res.returncode] = seen.get(res.returncode, 0) + 1
            for leftover in ("w", "p.h5"):  # nothing half-made under a final name
                path = project / leftover
                if path.exists() and res.returncode:
                    assert leftover == "p.h5" or (path / "hashes.json").is_file()
    assert any(code != 0 for code in seen), seen  # the signals did land mid-command
