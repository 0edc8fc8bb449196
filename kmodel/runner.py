"""The in-env runner: executed by a model env's own python, by file path, isolated.

    <env>/bin/python -I runner.py FD  < JOB.json

``-I`` keeps kmodel's own folder (and PYTHONPATH, the user's site-packages) off the model's
``sys.path``: nothing of kmodel can shadow a model's imports. The runner imports nothing
from kmodel's core (only kmodel/io/hdf5.py, loaded by file path under a private name), so
nothing of kmodel is installed into model envs. It builds the model from its entrypoint and
hyperparameters, then either predicts (streaming batches into an HDF5 file) or trains (fit
on the whole input, then writes one .npy per weight; the host adds params.json).

The job (kmodel/job.py, also loaded by path) comes on stdin, read once numpy and h5py are
imported: the host starts the runner early and checks its inputs meanwhile. An empty job
(the host gave up before sending one) ends the runner quietly. A job may hold several
prediction tasks: one model build serves them all.

Protocol: JSON lines on file descriptor FD, a pipe of its own, so nothing the model prints
on stdout or stderr can be mistaken for it: ``ready`` (numpy and h5py imported), then per
task ``task`` (its index), ``progress`` (rows done, rows of the task) and ``done``; or
``error`` (kind, message, traceback) for the task under way. The host checks every output
file itself; ``done`` is a claim, not a proof.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import platform
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, NoReturn, TextIO

import numpy as np

HERE = Path(__file__).resolve().parent


def _load_module(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


hdf5 = _load_module("_kmodel_hdf5", HERE / "io" / "hdf5.py")
jobs = _load_module("_kmodel_job", HERE / "job.py")
_channel: TextIO | None = None


class JobError(Exception):
    """A problem the runner reports as one line (kind is a stable word)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Stopped(BaseException):
    """SIGTERM from the host (or the cluster): stop after closing the output cleanly."""


def send(event: str, **fields: Any) -> None:
    if _channel is not None:
        _channel.write(json.dumps({"event": event, **fields}) + "\n")
        _channel.flush()


def build_model(job: Any) -> Any:
    model_dir = Path(job.model_dir)
    file, func = job.entrypoint.split(":")
    sys.path.insert(0, str(model_dir))
    module = _load_module(f"kmodel_model_{Path(file).stem}", model_dir / file)
    if not hasattr(module, func):
        raise JobError("entrypoint", f"{model_dir / file} defines no function {func!r}")
    build = getattr(module, func)
    extra = {"device": job.device} if _takes(build, "device") else {}
    model = build(**job.args, **extra)
    _set_threads(job.threads)
    if job.weights_dir:
        folder = Path(job.weights_dir)
        weights = {n[:-4]: np.load(folder / n, allow_pickle=False)
                   for n in job.weights if n.endswith(".npy")}
        model.set_weights(weights)
    return model


def _takes(func: Any, name: str) -> bool:
    """Whether ``func`` takes the keyword ``name`` (by name, or through **kwargs)."""
    import inspect

    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is p.VAR_KEYWORD or (p.name == name and p.kind in (
        p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)) for p in params)


def _set_threads(threads: int) -> None:
    """The job's threads for torch's intra-op pool, if the model imported torch (the BLAS
    and OpenMP pools took them from the environment the host set)."""
    torch = sys.modules.get("torch")
    if threads > 0 and torch is not None and hasattr(torch, "set_num_threads"):
        torch.set_num_threads(threads)


def _as_outputs(result: Any, outputs: dict[str, Any], rows: int) -> dict[str, np.ndarray]:
    """The model's result checked against the spec: exact names, shapes and castable dtypes.

    Nothing is reshaped: (2, N) returned for an output of shape [2] would scramble rows.
    """
    if not isinstance(result, dict):
        if len(outputs) != 1:
            raise JobError("output", f"predict returned {type(result).__name__}, the spec "
                           f"names outputs {list(outputs)}; return a dict of arrays")
        result = {next(iter(outputs)): result}
    extra = sorted(set(map(str, result)) - set(outputs))
    if extra:
        raise JobError("output", f"predict returned {extra}, which the spec's outputs "
                       f"({list(outputs)}) do not name; add them to the spec or drop them")
    out = {}
    for name, (dtype, shape) in outputs.items():
        if name not in result:
            raise JobError("output", f"predict returned no {name!r} (got {list(result)})")
        try:
            arr = np.asarray(result[name])
        except Exception as e:
            raise JobError("output", f"predict returned {name!r} that is not an array "
                           f"({type(e).__name__}: {e})") from None
        want = (rows, *shape) if shape is not None else (rows, *arr.shape[1:])  # free: any
        if arr.ndim != len(want) or any(w is not None and w != s
                                        for w, s in zip(want, arr.shape, strict=True)):
            shown = tuple("*" if w is None else w for w in want)
            raise JobError("output", f"predict returned shape {arr.shape} for {name!r} on a "
                           f"batch of {rows} rows; the spec says {shown}")
        if arr.dtype.kind not in "biuf":
            raise JobError("output", f"predict returned dtype {arr.dtype} for {name!r}; the "
                           f"spec says {dtype}")
        out[name] = arr.astype(dtype, copy=False)
    return out


def _write_failed(e: OSError, path: Path) -> NoReturn:
    """Report a failed write (a full disk, a size limit) and exit at once: after such a
    failure HDF5 may crash while closing the file, which would hide the cause."""
    text = str(e)
    info = {"errno": e.errno or 0, "path": str(path), "message": text.splitlines()[0][:300]}
    for code, words in ((errno.ENOSPC, "No space left"), (errno.EFBIG, "File too large"),
                        (errno.EDQUOT, "quota")):
        if e.errno == code or words in text:
            info = {"errno": code, "path": str(path)}
    sys.stderr.write(f"kmodel runner: writing {path} failed: {text}\n")
    sys.stderr.flush()
    send("error", kind="write", message=json.dumps(info), traceback="")
    os._exit(3)


def predict(job: Any, model: Any) -> None:
    """Every task of the job in turn, with one model: ``task`` then ``done`` events each."""
    outputs = {k: (v[0], tuple(v[1]) if v[1] is not None else None)
               for k, v in job.outputs.items()}
    for index, task in enumerate(job.tasks):
        send("task", index=index)
        _predict_task(job, task, model, outputs)
        send("done", index=index, rows=task.rows)


def _predict_task(job: Any, task: Any, model: Any, outputs: dict[str, Any]) -> None:
    dtypes = job.inputs  # name -> the dtype the spec promises the model
    names = list(dtypes)
    path, out_path = Path(task.input), Path(task.output)
    attrs = {**task.attrs, "env_python_version": platform.python_version(),
             "env_numpy_version": np.__version__}
    try:
        writer = hdf5.PredictionWriter(out_path, outputs, task.rows, hdf5.id_dtype(path),
                                       job.batch_size, attrs, task.resume)
    except OSError as e:
        _write_failed(e, out_path)
    send("progress", done=writer.rows_done, total=task.rows)
    # an output of free shape takes the first batch's; every later batch must match it
    outputs = {k: (dtype, shape if shape is not None or k not in writer.preds
                   else tuple(writer.preds[k].shape[1:])) for k, (dtype, shape) in outputs.items()}
    last, complete = 0.0, False
    try:
        for lo, ids, batch in hdf5.iter_batches(path, names, job.batch_size,
                                                task.start + writer.rows_done, task.stop):
            if job.host_pid and os.getppid() != job.host_pid:
                raise JobError("orphaned", "kmodel (the host process) is gone; stopping")
            batch = {k: _cast(v, dtypes[k], job.columns, ids) for k, v in batch.items()}
            result = model.predict(batch[names[0]] if len(names) == 1 else batch)
            preds = _as_outputs(result, outputs, len(ids))
            outputs = {k: (dtype, shape if shape is not None else tuple(preds[k].shape[1:]))
                       for k, (dtype, shape) in outputs.items()}
            try:
                writer.write(lo - task.start, ids, preds)
            except OSError as e:
                _write_failed(e, out_path)
            now = time.monotonic()
            if now - last > 0.2:
                send("progress", done=writer.rows_done, total=task.rows)
                last = now
        complete = writer.rows_done == task.rows
    finally:
        try:
            writer.close(complete)
        except OSError as e:
            _write_failed(e, out_path)


def _cast(values: np.ndarray, dtype: str, columns: list[str], ids: np.ndarray) -> np.ndarray:
    """A batch in the dtype the spec promises; for stored predictions (the composer's
    columns), NaN or inf (also from float64 beyond float32) is refused, naming the column."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = values.astype(dtype, copy=False)
    if columns and out.dtype.kind == "f":
        bad = ~np.isfinite(out.reshape(len(out), -1))
        if bad.any():
            row, col = (int(i[0]) for i in np.nonzero(bad))
            name = columns[col] if col < len(columns) else f"column {col}"
            where = bytes(hdf5.as_ids(ids[row:row + 1])[0]).decode(errors="replace")
            raise JobError("finite", f"{name} has NaN or inf (or a value beyond {dtype}) at "
                           f"id {where!r}; drop or fix those rows")
    return out


def _rows_not_finite(arr: np.ndarray, block: int = 1 << 16) -> int:
    """How many rows hold NaN or inf, counted a block at a time (no temporary the size of
    the training matrix)."""
    if arr.dtype.kind != "f" or not len(arr):
        return 0
    rows = arr.reshape(len(arr), -1)
    return sum(int((~np.isfinite(rows[lo:lo + block])).any(axis=1).sum())
               for lo in range(0, len(rows), block))


def _read_whole(path: Path, group: str, name: str, dtype: str, columns: list[str],
                block: int = 1 << 16) -> np.ndarray:
    """A whole dataset in ``dtype``, read ``block`` rows at a time into one array (no
    second copy in another dtype), checked as _cast checks batches."""
    out = None
    for lo, ids, batch in hdf5.iter_batches(path, [name], block, group=group):
        part = _cast(batch[name], dtype, columns, ids)
        if out is None:
            out = np.empty((hdf5.count_ids(path), *part.shape[1:]), part.dtype)
        out[lo:lo + len(part)] = part
    assert out is not None
    return out


def train(job: Any, model: Any) -> None:
    names = list(job.inputs)
    path = Path(job.input)
    arrays = {n: _read_whole(path, "inputs", n, job.inputs[n], job.columns) for n in names}
    targets, _ = hdf5.read_group(path, "targets", [job.targets])
    for group, found in (("inputs", arrays), ("targets", targets)):
        for name, arr in found.items():
            if bad := _rows_not_finite(arr):
                raise JobError("finite", f"/{group}/{name} has {bad} row(s) with NaN or inf; "
                               "drop or fix those rows before training")
    x = arrays[names[0]] if len(names) == 1 else arrays
    model.fit(x, targets[job.targets], **job.train_args, **_accepted(model.fit, job.fit_args))
    weights = {str(k): np.asarray(v) for k, v in model.get_weights().items()}
    out = Path(job.weights_out)
    try:
        for name, arr in weights.items():
            if arr.dtype.kind not in "biufc":
                raise JobError("output", f"get_weights() returned {name!r} of dtype "
                               f"{arr.dtype}; weights are numeric arrays (no pickles)")
            np.save(out / f"{name}.npy", arr, allow_pickle=False)
    except OSError as e:
        _write_failed(e, out)
    send("done", weights=sorted(weights), column_weights=_column_weights(model),
         fit_report=_fit_report(model))


def _accepted(fit: Any, offered: dict[str, Any]) -> dict[str, Any]:
    """What the composer tells an ensembler's fit (task, classes, ...), as far as fit takes
    it: a keyword it names, or all of them if it takes **kwargs."""
    import inspect

    try:
        params = inspect.signature(fit).parameters.values()
    except (TypeError, ValueError):
        return {}
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return dict(offered)
    names = {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    return {k: v for k, v in offered.items() if k in names}


def _fit_report(model: Any) -> dict[str, Any] | None:
    """What an ensembler says of its fit (``fit_report()``: e.g. its cross-validated loss),
    if it is plain JSON."""
    method = getattr(model, "fit_report", None)
    if method is None:
        return None
    report = method()
    try:
        json.dumps(report)
    except (TypeError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def _column_weights(model: Any) -> list[float] | None:
    """An ensembler's weight per input column, if it says (``column_weights()``)."""
    method = getattr(model, "column_weights", None)
    if method is None:
        return None
    values = np.asarray(method(), np.float64).ravel()
    return [float(v) for v in values] if np.all(np.isfinite(values)) else None


def _stop(signum: int, frame: Any) -> None:
    raise Stopped()


def _classify(e: BaseException) -> tuple[str, str]:
    """(kind, message) of a failure: the runner's own checks, a stop, or the model's code."""
    if isinstance(e, JobError):
        return e.kind, str(e)
    if isinstance(e, Stopped):
        return "stopped", "stopped by SIGTERM"
    if isinstance(e, SystemExit):  # the model called sys.exit() (or exit()) part-way
        return "exit", f"called sys.exit({e.code!r})"
    if isinstance(e, KeyboardInterrupt):
        return "exit", "raised KeyboardInterrupt"
    return "model", f"{type(e).__name__}: {e}"


def main(argv: list[str]) -> int:
    global _channel
    fd = int(argv[1])
    os.set_inheritable(fd, False)  # the model's own subprocesses do not get the channel
    _channel = os.fdopen(fd, "w", buffering=1)
    signal.signal(signal.SIGTERM, _stop)
    if hasattr(signal, "SIGXFSZ"):  # a file size limit gives EFBIG, not a silent kill
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    send("ready", python=platform.python_version(), numpy=np.__version__)
    try:
        text = sys.stdin.buffer.read()
        if not text:
            return 0  # the host did not send a job: nothing to do
        try:
            job = jobs.Job.from_json(text.decode())
        except (ValueError, TypeError) as e:
            raise JobError("job", f"unreadable job: {e}") from None
        model = build_model(job)
        (train if job.mode == "train" else predict)(job, model)
        return 0
    except BaseException as e:
        kind, message = _classify(e)
        tb = traceback.format_exc()
    sys.stderr.write(tb)
    send("error", kind=kind, message=message[:2000], traceback=tb[-20000:])
    return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv))
