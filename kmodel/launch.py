"""Starts the in-env runner on a Job, relays its events, maps its failures to errors.

The runner (kmodel/runner.py) runs with the model env's own python, isolated (``-I``), and
reports over a pipe of its own; what the model prints goes to a bounded tail, shown with -v.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kmodel import _subprocess
from kmodel.envs import Env
from kmodel.errors import (
    InputSchemaError,
    KmodelError,
    ModelContractError,
    ModelError,
    NotFiniteError,
    OutputNotWritableError,
    RunnerError,
    RunnerKilledError,
    SpecError,
    write_error,
)
from kmodel.job import Job

RUNNER = Path(__file__).with_name("runner.py")
Progress = Callable[[int, int], None]


@dataclass
class Outcome:
    """What the runner did: the tasks it finished, the one under way, how it failed."""

    done: list[int] = field(default_factory=list)
    current: int = 0
    error: KmodelError | None = None
    #: after training an ensembler: its weight per input column, and what it says of its
    #: fit (e.g. its cross-validated loss), if it says
    column_weights: list[float] | None = None
    fit_report: dict[str, Any] | None = None


def _events(fd: int) -> Iterator[dict[str, Any]]:
    """The runner's protocol messages (JSON lines on a pipe of their own)."""
    with os.fdopen(fd, "rb") as channel:
        for line in channel:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                yield event


class Runner:
    """A runner process in ``env``, started before its job is known.

    Its slow start (the env's python importing numpy and h5py) overlaps with the host's own
    checks of inputs, weights and locks; it then reads the job on its stdin. A runner whose
    job never comes is stopped by ``close`` (or gets EOF when kmodel dies).
    """

    def __init__(self, env: Env) -> None:
        self.env = env
        self.used = False
        run_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        read_fd, write_fd = os.pipe()
        try:
            self.proc = _subprocess.popen(
                [env.python, "-I", "-X", "faulthandler", RUNNER, str(write_fd)], env=run_env,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                pass_fds=(write_fd,))
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        self.channel = read_fd
        assert self.proc.stdout is not None
        self.output = _subprocess.Tail(self.proc.stdout)

    def run(self, job: Job, progress: Progress | None = None,
            outcome: Outcome | None = None) -> Outcome:
        """Send ``job`` and follow it. Returns what happened (``outcome.error`` set on
        failure); raises only when kmodel itself is interrupted (the runner is stopped
        first).

        ``outcome`` may be passed in, so that a caller interrupted mid-way still knows which
        tasks finished. Progress is reported over all tasks: (rows done, rows in all tasks).
        """
        assert not self.used, "a runner runs one job"
        self.used = True
        outcome = outcome or Outcome()
        sizes = [t.rows for t in job.tasks]
        events: list[dict[str, Any]] = []
        try:
            assert self.proc.stdin is not None
            with contextlib.suppress(BrokenPipeError):  # it died: its output says why
                with self.proc.stdin:
                    self.proc.stdin.write(job.to_json().encode())
            for event in _events(self.channel):
                kind = event.get("event")
                if kind == "progress":
                    if progress:
                        before = sum(sizes[: outcome.current])
                        progress(before + int(event["done"]), sum(sizes) or int(event["total"]))
                    continue
                if kind == "task":
                    outcome.current = int(event["index"])
                elif kind == "done" and "index" in event:
                    outcome.done.append(int(event["index"]))
                elif kind == "done":
                    if isinstance(event.get("column_weights"), list):
                        outcome.column_weights = [float(w) for w in event["column_weights"]]
                    if isinstance(event.get("fit_report"), dict):
                        outcome.fit_report = event["fit_report"]
                events.append(event)
            code = self.proc.wait()
        except BaseException:
            _subprocess.stop(self.proc)
            raise
        outcome.error = _failure(self.env, job, outcome.current, code, events,
                                 self.output.text())
        return outcome

    def close(self) -> None:
        """Stop the runner if its job never ran (or is still running)."""
        _subprocess.stop(self.proc)
        if not self.used:
            os.close(self.channel)


@contextlib.contextmanager
def started(env: Env) -> Iterator[Runner]:
    """A runner started now in ``env``, stopped at the end of the block unless it finished
    its job."""
    runner = Runner(env)
    try:
        yield runner
    finally:
        runner.close()


def run_job(env: Env, job: Job, progress: Progress | None = None,
            outcome: Outcome | None = None) -> Outcome:
    """Start a runner in ``env`` and run ``job`` (see Runner.run)."""
    with started(env) as runner:
        return runner.run(job, progress, outcome)


def _failure(env: Env, job: Job, current: int, code: int, events: list[dict[str, Any]],
             text: str) -> KmodelError | None:
    """None if the runner finished every task; else the error that says what happened."""
    kinds = {e.get("event") for e in events}
    error = next((e for e in events if e.get("event") == "error"), None)
    finished = "done" in kinds if job.mode == "train" else (
        sum(e.get("event") == "done" for e in events) == len(job.tasks))
    if code == 0 and finished and error is None:
        return None
    if error is not None:
        return _reported(job, current, error, text)
    if code < 0:
        return _killed(job, current, signal.Signals(-code), text)
    model = job.model_name
    if "ready" not in kinds:
        last = text.strip().splitlines()[-1] if text.strip() else f"exit code {code}"
        return RunnerError(f"model {model!r}: the runner could not start in env "
                           f"{env.prefix}: {last}; rebuild the env (delete it, then "
                           "`kmodel env create`)", detail=text)
    return ModelContractError(
        f"model {model!r}: its process exited with status {code} before finishing, "
        "without an error (its code may call os._exit, or it crashed in C code); run "
        "with -v for its output", detail=text)


def _killed(job: Job, current: int, sig: signal.Signals, text: str) -> KmodelError:
    """The runner died of a signal without saying why."""
    if sig.name == "SIGXFSZ":
        return OutputNotWritableError(Path(_output_name(job, current)),
                                      "the file size limit was reached (ulimit -f)",
                                      "raise the limit or choose a smaller output")
    return RunnerKilledError(f"model {job.model_name!r}: the runner was killed by {sig.name} "
                             "(out of memory or a time limit?)", detail=text)


def _reported(job: Job, current: int, error: dict[str, Any], text: str) -> KmodelError:
    """The error the runner reported (its kind says whose fault it is)."""
    model = job.model_name
    kind, lines = str(error.get("kind")), str(error.get("message", "")).splitlines()
    first = lines[0] if lines else "no message"
    detail = str(error.get("traceback") or "") + text[-4000:]
    where = "" if job.columns or not job.input else f"{job.input}: "  # not a temporary file
    if kind == "write":
        info = json.loads(first)
        e = OSError(info["errno"], info.get("message") or os.strerror(info["errno"]))
        return write_error(Path(_output_name(job, current)), e)
    made: dict[str, Callable[[], KmodelError]] = {
        "model": lambda: ModelError(f"model {model!r} raised {first}; run with -v for its "
                                    "traceback", detail=detail),
        "exit": lambda: ModelContractError(f"model {model!r}: {first} part-way; {_FIX}",
                                           detail=detail),
        "output": lambda: ModelContractError(f"model {model!r}: {first}; {_FIX}",
                                             detail=detail),
        "stopped": lambda: RunnerKilledError(f"model {model!r}: the runner was stopped "
                                             f"({first})", detail=detail),
        "job": lambda: RunnerError(f"model {model!r}: {first}; reinstall kmodel",
                                   detail=detail),
        "finite": lambda: NotFiniteError(f"{where}{first}"),
        "package": lambda: ModelContractError(f"model {model!r}: {first}", detail=detail),
        "weights": lambda: ModelContractError(f"model {model!r}: {first}", detail=detail),
        "inputs": lambda: InputSchemaError(f"{where}{first}"),
    }
    made["orphaned"] = made["stopped"]
    if kind in made:
        return made[kind]()
    return SpecError(Path(job.model_dir) / "model.yaml", first, field=kind,
                     fix="fix the model code or its spec")


_FIX = "fix the model's code (kmodel keeps nothing it did not check)"


def _output_name(job: Job, current: int) -> str:
    """The final name of what the runner was writing (not its temporary name)."""
    if job.mode == "train" or not job.tasks:
        return job.output_name
    return job.tasks[min(current, len(job.tasks) - 1)].output_name
