"""Host side of prediction: checks, env, locks, finalising the files.

The host never imports model code: it builds a Job (kmodel/job.py) and kmodel/launch.py
runs it in the model env. It trusts nothing the runner says: a prediction is renamed to
its final name only after the host has read back that every row was written, from the
input it started with.

Files of one ``predict -o OUT``, all under a lock kmodel holds for the whole run
(``OUT.lock``): the runner writes ``OUT.partial-<run id>`` (created exclusively, unique to
the run); it becomes OUT when complete, ``OUT.partial`` (for ``--resume``) when the run is
interrupted or the runner killed, and is removed when the model fails. A run killed with
SIGKILL leaves its working file behind; the next run on OUT adopts it as ``OUT.partial``.

numpy and h5py (kmodel/io/hdf5.py) are imported inside the functions that read files: the
runner is started before them, so its own start overlaps with the host's checks.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import numbers
import os
import re
import shlex
import signal
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kmodel import _lock, launch, provenance, record
from kmodel._fs import (
    cached_sha256,
    check_input_file,
    file_signature,
    guard_output,
)
from kmodel.defaults import BATCH_SIZE
from kmodel.envs import Env, backend_for
from kmodel.errors import (
    InputChangedError,
    InputSchemaError,
    Interrupted,
    KmodelError,
    ModelContractError,
    ResumeMismatchError,
    RunnerKilledError,
    UsageError,
    signum_of,
    write_error,
)
from kmodel.job import Job, Task
from kmodel.launch import Outcome, Progress, Runner
from kmodel.record import PredictionRecord
from kmodel.registry import Model, Registry
from kmodel.resources import JobOptions, place_model
from kmodel.weights import Weights

log = logging.getLogger("kmodel")
__all__ = ["Progress", "check_input", "ensure_env", "predict", "predict_many", "row_range"]


def check_input(model: Model, path: Path) -> int:
    """Check the input file against the spec's inputs before any env starts; return rows."""
    import numpy as np

    from kmodel.io import hdf5

    check_input_file(path)
    try:
        found, rows = hdf5.describe(path, "inputs")
    except hdf5.MissingIds:
        raise InputSchemaError(f"{path}: no /metadata/id; write one id per row (predictions "
                               "are aligned by id)") from None
    except hdf5.LayoutError as e:
        raise InputSchemaError(f"{path}: {e}") from None
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
        raise InputSchemaError(f"{path}: not a kmodel input file ({e}); write /inputs/<name> "
                               "and /metadata/id") from None
    for spec in model.spec.inputs:
        if spec.name not in found:
            raise InputSchemaError(f"{path}: no dataset /inputs/{spec.name} required by model "
                                   f"{model.name!r} (found {sorted(found) or 'none'}); "
                                   "rename the dataset or fix the spec's inputs")
        dtype, shape = found[spec.name]
        want = list(spec.shape or [])
        if not np.can_cast(np.dtype(dtype), np.dtype(spec.dtype), "same_kind"):
            raise InputSchemaError(f"{path}: /inputs/{spec.name} has dtype {dtype}, model "
                                   f"{model.name!r} expects {spec.dtype}; convert the data")
        if len(shape) != len(want) or any(
                w is not None and w != s for w, s in zip(want, shape, strict=True)):
            shown = tuple("*" if w is None else w for w in want)
            raise InputSchemaError(f"{path}: /inputs/{spec.name} has rows of shape {shape}, "
                                   f"model {model.name!r} expects {shown}; reshape the data")
    return rows  # (no rows: an output of no rows, e.g. an empty region or shard)


def ready_env(registry: Registry, model: Model) -> Env | None:
    """The model's env if it is built and current (None: ``ensure_env`` will say why, or
    build it)."""
    try:
        ref = registry.env_of(model)
    except KmodelError:
        return None
    return backend_for(ref).find(ref)


def ensure_env(registry: Registry, model: Model) -> tuple[Env, Path]:
    """Build (or find) the model's env; return it with its lockfile."""
    ref = registry.env_of(model)
    backend = backend_for(ref)
    return backend.ensure(ref), ref.lockfile


def model_files(registry: Registry, model: Model, weights: Weights | None) -> list[Path]:
    """What a model run reads besides its input: no output may be one of these."""
    files = [model.path, model.folder / model.spec.entry_file, *(weights.files if weights
                                                                  else [])]
    ref = registry.env_of(model)
    return [*files, ref.path, ref.lockfile]


def _is_prediction(path: Path) -> bool:
    from kmodel.io import hdf5

    return hdf5.is_prediction(path)


def partial_path(output: Path) -> Path:
    return output.with_name(output.name + ".partial")


_WORK_SUFFIX = re.compile(r"\.partial-[0-9a-f]{8}$")


def _rows_done(path: Path) -> int:
    """The rows a working file records as written (0 if it cannot be read)."""
    try:
        return record.read(path).rows_done or 0
    except (OSError, ValueError, KmodelError):
        return 0  # killed before its first checkpoint: nothing to resume from


def _adopt_killed(output: Path) -> None:
    """Working files of runs killed outright (SIGKILL, a lost node) become ``OUT.partial``,
    the newest last, so that ``--resume`` finds them. Called under the output's lock, so
    no live run owns them."""
    found = []
    for p in output.parent.glob(f"{glob.escape(output.name)}.partial-*"):
        if _WORK_SUFFIX.search(p.name) and p.name.startswith(output.name):
            with contextlib.suppress(OSError):
                st = p.lstat()
                if stat.S_ISREG(st.st_mode):
                    found.append((st.st_mtime, p))
    for _, p in sorted(found):
        try:
            if _rows_done(p) == 0:
                p.unlink()  # named by a kmodel run (.partial-<hex>): nobody else's file
                continue
            os.replace(p, partial_path(output))
            log.info("kept the partial predictions of a killed run as %s", partial_path(output))
        except OSError:
            pass  # OUT.partial is a folder, say: leave both where they are


def _resumable(partial: Path, want: PredictionRecord, input_path: Path) -> bool:
    """True if ``partial`` can be continued; False to start over; raise if it belongs to
    another run (other model, spec, weights, lock, batch size, row range or input)."""
    try:
        st = partial.lstat()
    except FileNotFoundError:
        log.info("no %s to resume; starting from the first row", partial.name)
        return False
    if not stat.S_ISREG(st.st_mode):
        raise ResumeMismatchError(f"{partial} is not a regular file (a symlink, folder or "
                                  "FIFO), so not one kmodel wrote; remove it, or run without "
                                  "--resume")
    try:
        found = record.read(partial)
    except OSError:
        log.warning("%s is unreadable (killed mid-write); starting over", partial)
        return False
    done = found.rows_done
    span = (want.rows_stop or 0) - (want.rows_start or 0)
    if done is None or not 0 <= done <= span:
        log.warning("%s records no valid row count (%r); starting over", partial, done)
        return False
    if found.input_signature != want.input_signature:
        # the input was rewritten, copied or touched since: resume only if its bytes match
        if not found.input_sha256 or found.input_sha256 != cached_sha256(input_path):
            raise ResumeMismatchError(
                f"{partial} was written from a different input (or {input_path} changed "
                "since); refusing to append to it: delete it or run without --resume")
    if key := found.first_difference(want, PredictionRecord.SAME_RUN):
        raise ResumeMismatchError(
            f"{partial} was written by another run (different {key}); refusing to "
            "append to it: delete it or run without --resume")
    log.info("resuming %s from row %d", partial, done)
    return True


class _Background:
    """A value (an input's sha256, say) computed in a daemon thread alongside the runner;
    never waited for when the run is interrupted."""

    def __init__(self, compute: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(compute,), daemon=True)
        self.thread.start()

    def _run(self, compute: Callable[[], Any]) -> None:
        try:
            self.value = compute()
        except BaseException as e:
            self.error = e

    def result(self, timeout: float | None = None) -> Any:
        self.thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.value


Rows = tuple[int, int | None]  # START:STOP as given (STOP None: to the end)
Shard = tuple[int, int]  # (K, N): the K-th of N slices, K counted from 0


def row_range(path: Path, total: int, batch_size: int, rows: Rows | None = None,
              shard: Shard | None = None) -> tuple[int, int]:
    """The rows [start, stop) to predict. Shards are cut at multiples of the batch size, so
    every batch is the one an unsharded run would make: merged shards equal its output."""
    if shard is not None:
        k, n = shard
        batches = -(-total // batch_size)
        return (min(total, batches * k // n * batch_size),
                min(total, batches * (k + 1) // n * batch_size))
    if rows is None:
        return 0, total
    start, stop = rows[0], total if rows[1] is None else rows[1]
    if not 0 <= start < stop <= total:
        raise UsageError(f"--rows {start}:{rows[1] if rows[1] is not None else ''} is not a "
                         f"range within the {total} rows of {path}; give START:STOP with "
                         f"0 <= START < STOP <= {total}")
    return start, stop


def batch_size_of(value: Any) -> int:
    """A batch size given by a caller (None: the default), checked: a positive integer."""
    if value is None:
        return BATCH_SIZE
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise UsageError(f"batch_size {value!r} is not a positive whole number (an int of "
                         f"1 or more, e.g. {BATCH_SIZE}; None for the default)")
    return int(value)


@dataclass
class _Pending:
    """One task of a predict run, on the host side: where it writes, what it resumed."""

    input: Path
    output: Path
    task: Task
    resumed: bool
    signature: str
    hash: _Background
    again: str  # the command that resumes it
    outputs: list[str]  # the spec's output names
    classes: dict[str, list[Any]]  # the class of each column, of outputs whose spec says
    upstream: _Background | None = None  # sha256 of upstream files, computed meanwhile

    @property
    def work(self) -> Path:
        return Path(self.task.output)

    @property
    def partial(self) -> Path:
        return partial_path(self.output)


def predict(registry: Registry, name: str, input_path: Path, output: Path, *,
            batch_size: int | None = None, resume: bool = False,
            weights: Weights | None = None, progress: Progress | None = None,
            rows: Rows | None = None, shard: Shard | None = None,
            columns: Sequence[str] = (), upstream: Sequence[Path] = (),
            options: JobOptions | None = None) -> Path:
    """Run model ``name`` on ``input_path`` and write ``output`` (atomically)."""
    return predict_many(registry, name, [(input_path, output)], batch_size=batch_size,
                        resume=resume, weights=weights, progress=progress, rows=rows,
                        shard=shard, columns=columns, upstream=upstream, options=options)[0]


def predict_many(registry: Registry, name: str, pairs: Sequence[tuple[Path, Path]], *,
                 batch_size: int | None = None, resume: bool = False,
                 weights: Weights | None = None, progress: Progress | None = None,
                 rows: Rows | None = None, shard: Shard | None = None,
                 columns: Sequence[str] = (), upstream: Sequence[Path] = (),
                 options: JobOptions | None = None) -> list[Path]:
    """Run model ``name`` on each (input, output) pair with one runner process (one env
    start-up, one model build); each output appears only when complete. ``upstream``:
    files the input was made from (the composer's prediction files), whose sha256 every
    output records; ``columns`` names the input's columns when they are stored predictions
    (the composer). ``options``: threads, device and where the model's own output goes
    (default: the spec's resources and device); a GPU the job cannot see is refused
    (KM510) before anything starts."""
    size = batch_size_of(batch_size)
    model = registry.model(name)
    placement = place_model(model, options)
    weights = weights or Weights.of(model)
    outputs = [o for _, o in pairs]
    with contextlib.ExitStack() as deferred, contextlib.ExitStack() as held:
        # the runner starts now when its env is built: it imports numpy and h5py while
        # the outputs, inputs, weights and locks are checked here (it waits for its job)
        ready = ready_env(registry, model)
        early = (held.enter_context(launch.started(ready, placement, options))
                 if ready is not None else None)
        _guard_outputs(registry, model, weights, pairs)
        totals = [check_input(model, i) for i, _ in pairs]
        ranges = [row_range(i, n, size, rows, shard)
                  for (i, _), n in zip(pairs, totals, strict=True)]
        if weights:
            weights.verify(name)
        for output in outputs:
            held.enter_context(_lock.writing(output))
            _adopt_killed(output)
        env, _ = ensure_env(registry, model)
        runner = early if early is not None and early.env == env else \
            held.enter_context(launch.started(env, placement, options))
        base = replace(_base_record(registry, model, weights, env, size),
                       threads=placement.threads or 0, device=placement.device)
        pending = [_prepare(model, i, o, span, n, base, resume)
                   for (i, o), span, n in zip(pairs, ranges, totals, strict=True)]
        job = replace(_job(model, weights, size, pending, columns),
                      threads=placement.threads or 0, device=placement.device)
        outcome = _run(runner, job, pending, progress, upstream)
        # from here to the lock's release a signal waits (a moment): an output renamed
        # into place is reported as written, and its lock is always released
        result = ["temporary files were removed"]
        deferred.enter_context(_signals_deferred(result))
        _conclude(pending, outcome, name)
        result[0] = f"{', '.join(map(str, outputs))} had been written in full before it"
    return outputs


def _guard_outputs(registry: Registry, model: Model, weights: Weights | None,
                   pairs: Sequence[tuple[Path, Path]]) -> None:
    """No output may be given twice, nor destroy an input or a file kmodel reads."""
    inputs, outputs = [i for i, _ in pairs], [o for _, o in pairs]
    if len({os.path.realpath(o) for o in outputs}) != len(outputs):
        raise UsageError("two -o options name the same output; give each input its own")
    for output in outputs:
        guard_output(output, [*inputs, *model_files(registry, model, weights),
                              *registry.owned_files()], siblings=(".partial", ".lock"),
                     replaceable=_is_prediction)


def _base_record(registry: Registry, model: Model, weights: Weights | None, env: Env,
                 batch_size: int) -> PredictionRecord:
    """What every output of the run records (each task adds its rows and input)."""
    made = provenance.of_model(registry, model, weights)
    return PredictionRecord(model=model.name, model_version=model.spec.version,
                            made=made.to_attrs(), env_key=env.key, batch_size=batch_size,
                            weights_dir=str(weights.folder.resolve()) if weights else "")


def _job(model: Model, weights: Weights | None, batch_size: int, pending: list[_Pending],
         columns: Sequence[str]) -> Job:
    return Job(mode="predict", model_name=model.name, model_dir=str(model.folder.resolve()),
               entrypoint=model.spec.entrypoint, args=model.spec.args,
               inputs={i.name: i.dtype for i in model.spec.inputs},
               outputs={o.name: [o.dtype, o.shape] for o in model.spec.outputs},
               weights_dir=str(weights.folder.resolve()) if weights else None,
               weights=sorted(weights.sha256) if weights else [], batch_size=batch_size,
               host_pid=os.getpid(), tasks=[p.task for p in pending], columns=list(columns))


def _run(runner: Runner, job: Job, pending: list[_Pending], progress: Progress | None,
         upstream: Sequence[Path]) -> Outcome:
    """Run the job; an interrupted run keeps what it wrote (for --resume) and says so."""
    outcome = Outcome()
    later = _Background(lambda: provenance.upstream(upstream) if upstream else None)
    for p in pending:
        p.upstream = later
    try:
        runner.run(job, progress, outcome)
    except (Interrupted, KeyboardInterrupt) as e:
        failed = _finish_all(pending, outcome.done, job.model_name)
        left = [p for k, p in enumerate(pending) if k not in outcome.done]
        if not left and failed is None:  # the signal came as the runner was ending
            signum = e.signum if isinstance(e, Interrupted) else signum_of(e)
            written = ", ".join(str(p.output) for p in pending)
            raise Interrupted(signum, f"{written} had been written in full before it") from None
        raise _stopped(left[0] if left else pending[outcome.current], e) from None
    for index in outcome.done:  # the slow part of finishing (hashes), still stoppable
        with contextlib.suppress(Exception):
            pending[index].hash.result()
            later.result()
    return outcome


def _conclude(pending: list[_Pending], outcome: Outcome, name: str) -> None:
    """Finish every task the runner did; then raise the runner's error, if any."""
    finished = _finish_all(pending, outcome.done, name)
    if outcome.error is not None:
        now = pending[outcome.current]
        if isinstance(outcome.error, RunnerKilledError):
            raise _stopped(now, outcome.error)
        _discard(now.work, now.partial, now.resumed)
        raise outcome.error
    if finished is not None:
        raise finished


@contextlib.contextmanager
def _signals_deferred(outcome: list[str]) -> Iterator[None]:
    """SIGTERM and SIGINT wait until the block is over; one that came meanwhile is then
    reported with ``outcome[0]`` (what the block got done)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        yield
    finally:
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)  # runs a waiting signal's handler
        except KeyboardInterrupt as e:
            raise Interrupted(signum_of(e), outcome[0]) from None


def _prepare(model: Model, input_path: Path, output: Path, span: tuple[int, int], total: int,
             base: PredictionRecord, resume: bool) -> _Pending:
    """The task for one output: its record, whether it resumes, its working file."""
    from dataclasses import replace

    signature = file_signature(input_path)
    near = output.parent  # what the record names, it names relative to the output's folder
    want = replace(base, rows_start=span[0], rows_stop=span[1], input_rows=total,
                   input_signature=f"{record.relative(input_path, near)}|{signature}",
                   weights_dir=record.relative(base.weights_dir, near) if base.weights_dir
                   else base.weights_dir)
    partial = partial_path(output)
    resumed = resume and _resumable(partial, want, input_path)
    work = output.with_name(f"{output.name}.partial-{os.urandom(4).hex()}")
    if resumed:
        os.replace(partial, work)  # a regular file (checked), renamed: never followed
    task = Task(input=str(input_path.resolve()), output=str(work.resolve()),
                output_name=str(output), start=span[0], stop=span[1], resume=resumed,
                attrs=want.to_attrs())
    subset = ["--rows", f"{span[0]}:{span[1]}"] if span != (0, total) else []
    again = shlex.join(["kmodel", "predict", model.name, "-i", str(input_path), "-o",
                        str(output), "--batch-size", str(base.batch_size), *subset,
                        "--resume"])
    digest = _Background(lambda: cached_sha256(input_path))  # overlaps with the runner
    return _Pending(input_path, output, task, resumed, signature, digest, again,
                    [o.name for o in model.spec.outputs],
                    {o.name: list(o.classes) for o in model.spec.outputs if o.classes})


def _finish_all(pending: list[_Pending], done: list[int], name: str) -> KmodelError | None:
    """Finish every task the runner reported done; return the first failure (the others
    are still finished)."""
    first: KmodelError | None = None
    for index in done:
        try:
            _finish(pending[index], name)
        except KmodelError as e:
            first = first or e
    return first


def _finish(p: _Pending, name: str) -> None:
    """Check a finished task's file (every row, from the same input), then rename it."""
    from kmodel.io import hdf5

    try:
        _check_complete(p.work, name, p.task.rows, p.outputs)
        if not _unchanged(p.input, p.signature):
            raise InputChangedError(
                f"{p.input} changed while model {name!r} was predicting; the predictions "
                "would mix two inputs, so none were kept: rerun")
        hdf5.set_attrs(p.work, record.finished(
            p.hash.result(), p.upstream.result() if p.upstream else None,
            time.strftime("%Y-%m-%dT%H:%M:%S%z"), p.output.parent))
        for name, classes in p.classes.items():  # which column is which class
            hdf5.set_attrs(p.work, {"classes": json.dumps(classes)}, dataset=f"preds/{name}")
        os.replace(p.work, p.output)
    except OSError as e:
        _discard(p.work, p.partial, p.resumed)
        raise write_error(p.output, e) from None
    except BaseException:
        _discard(p.work, p.partial, p.resumed)
        raise
    if _is_partial(p.partial, name):  # superseded by the finished output
        with contextlib.suppress(OSError):
            p.partial.unlink()
    log.debug("wrote %s (%d rows)", p.output, p.task.rows)


def _is_partial(path: Path, model: str) -> bool:
    """A regular file holding this model's partial predictions (not a user's file)."""
    try:
        return stat.S_ISREG(path.lstat().st_mode) and record.read(path).model == model
    except (OSError, ValueError, KmodelError):
        return False


def _stopped(p: _Pending, e: BaseException) -> KmodelError:
    """The error for an interrupted run or a killed runner, after keeping the task's rows
    in OUT.partial (for --resume)."""
    kept, where = _keep_partial(p.work, p.partial, p.hash, p.resumed)
    what = (f"{kept} rows kept in {where}; continue with `{p.again}`" if kept
            else "temporary files were removed")
    if isinstance(e, RunnerKilledError):
        return RunnerKilledError(e.what, what if kept else "no rows were written; rerun",
                                 detail=e.detail)
    return Interrupted(e.signum if isinstance(e, Interrupted) else signum_of(e), what)


def _unchanged(path: Path, signature: str) -> bool:
    try:
        return file_signature(path) == signature
    except OSError:
        return False  # deleted or replaced


def _keep_partial(work: Path, partial: Path, input_hash: _Background,
                  resumed: bool) -> tuple[int, Path]:
    """Keep an interrupted run's rows as OUT.partial for --resume; return how many, where."""
    from kmodel.io import hdf5

    done = _rows_done(work)
    if done == 0:
        _discard(work, partial, resumed)
        return 0, partial
    with contextlib.suppress(Exception):
        digest = input_hash.result(timeout=0)
        if digest:  # lets --resume accept the input even if it is copied or touched
            hdf5.set_attrs(work, PredictionRecord(input_sha256=digest).to_attrs())
    try:
        os.replace(work, partial)
    except OSError:
        return done, work  # OUT.partial is a folder, say: the rows stay where they are
    return done, partial


def _discard(work: Path, partial: Path, resumed: bool) -> None:
    """A failed run removes only what it created; a partial it resumed is put back."""
    with contextlib.suppress(OSError):
        if resumed:
            os.replace(work, partial)
        else:
            work.unlink()


def _check_complete(path: Path, model: str, rows: int, outputs: Sequence[str]) -> None:
    """Every output, every row and the complete flag, read back from the file."""
    from kmodel.io import hdf5

    try:
        found_record = record.read(path)
        found, total = hdf5.describe(path, "preds")
    except (OSError, ValueError, KmodelError) as e:
        raise ModelContractError(f"model {model!r}: the runner reported success but its "
                                 f"output is unreadable ({e}); rerun") from None
    if sorted(found) != sorted(outputs):
        raise ModelContractError(f"model {model!r}: the file holds outputs {sorted(found)}, "
                                 f"the spec names {sorted(outputs)}; delete the partial and "
                                 "rerun without --resume")
    done = -1 if found_record.rows_done is None else found_record.rows_done
    if done != rows or total != rows or not found_record.complete:
        raise ModelContractError(
            f"model {model!r} stopped after {max(done, 0)} of {rows} rows without an error "
            "(did its code call sys.exit or os._exit?); nothing was kept: fix the model")
