"""The in-env runner: executed by a model env's own python, by file path, isolated.

    <env>/bin/python -I runner.py FD  < JOB.json

``-I`` keeps kmodel's own folder (and PYTHONPATH, the user's site-packages) off the model's
``sys.path``: nothing of kmodel can shadow a model's imports. The runner imports nothing
from kmodel's core (only kmodel/io/hdf5.py, loaded by file path under a private name), so
nothing of kmodel is installed into model envs. It builds the model from its entrypoint and
hyperparameters, then either predicts (streaming batches into an HDF5 file) or trains (fit
on the whole input, then saves its weights: the model's own native files through
save(folder), else one .npy per weight of get_weights(), or one weights.safetensors where
.npy files cannot hold them, and a sample of the training rows with the trained model's
predictions of them: the host has a fresh runner load the weights and predict the
sample, which must match; the host adds params.json).

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

import contextlib
import errno
import importlib.util
import json
import os
import platform
import re
import signal
import sys
import time
import traceback
from collections.abc import Iterator
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
    """The model from its entrypoint and hyperparameters, with its weights if the job
    has a weights folder."""
    model = _new_model(job)
    if job.weights_dir:
        folder = Path(job.weights_dir)
        if _native(model):  # only files whose hashes the host checked may be read
            extra = sorted(p.name for p in folder.iterdir()
                           if p.name not in job.weights and p.name not in KMODEL_FILES
                           and p.name != SNAKEMAKE_MARK)
            if extra:
                raise JobError("weights", f"{folder} holds {extra[0]}, which its hashes do "
                               "not list; record it (`kmodel hash MODEL --write`) or remove "
                               "it")
        load_weights(model, folder, job.weights)
    return model


def _new_model(job: Any) -> Any:
    model_dir = Path(job.model_dir)
    file, func = job.entrypoint.split(":")
    sys.path.insert(0, str(model_dir))
    module = _load_module(f"kmodel_model_{Path(file).stem}", model_dir / file)
    if not hasattr(module, func):
        raise JobError("entrypoint", f"{model_dir / file} defines no function {func!r}")
    build = getattr(module, func)
    model = build(**job.args, **_accepted(build, {"device": job.device}))
    _set_threads(job.threads)
    return model


# --- weights: what a model gives and takes, and their files --------------------------

#: kmodel's own files in a weights folder (the host writes them; a model may not)
KMODEL_FILES = ("params.json", "provenance.json", "hashes.json")
#: the empty file Snakemake puts in a directory() output (a fold's weights under `kmodel
#: run`): not the model's, never read
SNAKEMAKE_MARK = ".snakemake_timestamp"
#: the one file of weights that .npy files cannot hold (names with "/" or ".", a list,
#: bfloat16 and other ml_dtypes, torch tensors)
SAFETENSORS = "weights.safetensors"
#: weight names that make file names as they are (today's one .npy per weight)
_FILE_SAFE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,199}$")


def _native(model: Any) -> bool:
    """The model saves and loads native files itself (save(folder), load(folder))."""
    return callable(getattr(model, "save", None)) and callable(getattr(model, "load", None))


def _is_torch(value: Any) -> bool:
    return type(value).__module__.split(".")[0] == "torch" and hasattr(value, "detach")


def _as_array(name: str, value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "biufc" and arr.dtype.type.__module__ != "ml_dtypes":
        raise JobError("output", f"get_weights() returned {name!r} of dtype {arr.dtype}; "
                       "weights are numeric arrays (no pickles)")
    return arr


def save_weights(model: Any, out: Path) -> None:
    """The trained model's weights into ``out``: its own native files (save), else what
    get_weights() returns: one .npy per weight for a dict of numeric numpy arrays with
    file-safe names (as always), else one weights.safetensors (names as given, a list's
    order, bfloat16, torch tensors)."""
    if _native(model):
        model.save(str(out))
        entries = sorted(out.iterdir())
        for entry in entries:
            if entry.name in KMODEL_FILES:
                raise JobError("output", f"save() wrote {entry.name}, a name kmodel keeps for "
                               "its own file; give the file another name")
            if entry.is_symlink() or not entry.is_file():
                raise JobError("output", f"save() wrote {entry.name}, which is not a plain "
                               "file; a weights folder holds files only (no folders or links)")
        if not entries:
            raise JobError("output", "save() wrote no file into the folder it was given")
        return
    given = model.get_weights()
    container = "list" if isinstance(given, (list, tuple)) else "dict"
    if container == "list":
        given = {str(i): v for i, v in enumerate(given)}
    elif not hasattr(given, "items"):
        raise JobError("output", f"get_weights() returned {type(given).__name__}; return a "
                       "dict of name -> array, or a list of arrays")
    given = {str(k): v for k, v in given.items()}
    torch = [k for k, v in given.items() if _is_torch(v)]
    if torch and len(torch) != len(given):
        plain = next(k for k in given if k not in torch)
        raise JobError("output", f"get_weights() mixes torch tensors ({torch[0]!r}) and "
                       f"arrays ({plain!r}); return one kind")
    arrays = {} if torch else {k: _as_array(k, v) for k, v in given.items()}
    if container == "dict" and not torch and all(
            _FILE_SAFE.match(k) and a.dtype.kind in "biufc" for k, a in arrays.items()):
        for name, arr in arrays.items():
            np.save(out / f"{name}.npy", arr, allow_pickle=False)
        return
    meta = {"kmodel_container": container, "kmodel_framework": "torch" if torch else "numpy"}
    try:
        if torch:
            from safetensors.torch import save_file as save_torch

            tensors, seen = {}, set()
            for k, v in given.items():  # tied weights share memory: safetensors wants copies
                t = v.detach().cpu().contiguous()
                if t.numel() and t.data_ptr() in seen:
                    t = t.clone()
                seen.add(t.data_ptr())
                tensors[k] = t
            save_torch(tensors, str(out / SAFETENSORS), metadata=meta)
        else:
            from safetensors.numpy import save_file

            save_file({k: a if a.flags.c_contiguous else a.copy(order="C")  # (keeps 0-d)
                       for k, a in arrays.items()},
                      str(out / SAFETENSORS), metadata=meta)
    except ImportError:
        why = next((f"names like {k!r}" for k in given if not _FILE_SAFE.match(k)),
                   "a list" if container == "list" else "torch tensors" if torch
                   else "dtypes numpy files cannot hold (e.g. bfloat16)")
        raise JobError("package", f"its weights ({why}) are stored in one {SAFETENSORS}, "
                       "which needs the safetensors package in the model's env: add "
                       "`safetensors` to the pip list of its env spec and relock "
                       "(`kmodel env lock`)") from None


def _read_safetensors(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The tensors of a safetensors file (torch tensors if kmodel saved torch tensors,
    else numpy arrays) and its metadata."""
    try:
        from safetensors import safe_open
    except ImportError:
        raise JobError("package", f"{path.name} needs the safetensors package in the "
                       "model's env: add `safetensors` to the pip list of its env spec and "
                       "relock (`kmodel env lock`)") from None
    try:  # registers bfloat16 and the other ml_dtypes with numpy, if the env has them
        import ml_dtypes  # noqa: F401
    except ImportError:
        pass
    with safe_open(str(path), framework="np") as f:
        meta = dict(f.metadata() or {})
    if meta.get("kmodel_framework") == "torch":
        from safetensors.torch import load_file as load_torch

        return dict(load_torch(str(path), device="cpu")), meta
    from safetensors.numpy import load_file

    return dict(load_file(str(path))), meta


@contextlib.contextmanager
def _keras_safe_mode(folder: Path) -> Iterator[None]:
    """While a model loads a folder holding a .keras archive, Keras' safe mode is on
    whatever the model asks (load_model(safe_mode=False), enable_unsafe_deserialization):
    no Lambda layer's Python code is deserialized."""
    if not any(p.name.lower().endswith(".keras") for p in folder.iterdir()):
        yield
        return
    try:
        from keras.src.saving import serialization_lib
    except ImportError:  # no Keras 3 in the env: nothing can load the archive unsafely
        yield
        return
    unsafe = serialization_lib.in_safe_mode
    serialization_lib.in_safe_mode = lambda: True
    try:
        yield
    except ValueError as e:
        if "safe_mode" not in str(e):
            raise
        raise JobError("weights", "its .keras archive holds Python code (a Lambda layer's), "
                       "which Keras' safe mode refuses to load; kmodel loads Keras archives "
                       "in safe mode only, whatever load() asks: write the layer as a class "
                       "in model.py (keras.saving.register_keras_serializable)") from None
    finally:
        serialization_lib.in_safe_mode = unsafe


def load_weights(model: Any, folder: Path, files: list[str]) -> None:
    """Give ``model`` the weights of ``folder`` (``files``: those whose hashes the host
    checked): load(folder) for a model with native files, else set_weights() with what
    get_weights() gave: a dict of name -> array (or torch tensor, if it gave torch tensors),
    or a list in its order."""
    if _native(model):
        with _keras_safe_mode(folder):
            model.load(str(folder))
        return
    weights: dict[str, Any] = {}
    container = "dict"
    for name in sorted(files):
        path = folder / name
        if name.endswith(".npy"):
            found = {name[:-4]: np.load(path, allow_pickle=False)}
        elif name.endswith(".safetensors"):
            found, meta = _read_safetensors(path)
            container = meta.get("kmodel_container", container)
        elif name in KMODEL_FILES or name == "sources.json":  # (an older ensembler's)
            continue
        else:
            raise JobError("weights", f"{path} is a native file, which set_weights() cannot "
                           "take; a model with native weight files defines save(folder) and "
                           "load(folder)")
        if twice := sorted(set(found) & set(weights)):
            raise JobError("weights", f"{folder} holds weight {twice[0]!r} twice (in "
                           f"{name} and another file); keep one")
        weights.update(found)
    if container == "list":
        model.set_weights([weights[str(i)] for i in range(len(weights))])
    else:
        model.set_weights(weights)


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
    out = Path(job.weights_out)
    try:
        save_weights(model, out)
    except OSError as e:
        _write_failed(e, out)
    if job.reload_sample:
        _write_sample(job, model, arrays, Path(job.reload_sample))
    send("done", column_weights=_column_weights(model), fit_report=_fit_report(model))


#: the reload check's sample: at most this many training rows, evenly spaced
RELOAD_ROWS = 256


def _write_sample(job: Any, trained: Any, arrays: dict[str, np.ndarray], path: Path) -> None:
    """For the host's reload check: up to RELOAD_ROWS training rows (evenly spaced, so
    deterministic), their ids and the trained model's predictions of them, into ``path``
    (/inputs, /trained). The host predicts the same rows with a fresh model, in a fresh
    process, from the weights just saved, and compares."""
    rows = len(next(iter(arrays.values())))
    index = np.unique(np.linspace(0, rows - 1, min(rows, RELOAD_ROWS)).round().astype(np.int64))
    sample = {k: v[index] for k, v in arrays.items()}
    outputs = {k: (v[0], tuple(v[1]) if v[1] is not None else None)
               for k, v in job.outputs.items()}
    names = list(job.inputs)
    result = trained.predict(sample[names[0]] if len(names) == 1 else sample) if rows else {}
    preds = _as_outputs(result, outputs, len(index)) if rows else {}
    ids = hdf5.read_ids(Path(job.input))[index]
    try:
        hdf5.write_table(path, {"inputs": sample, "trained": preds}, ids)
    except OSError as e:
        _write_failed(e, path)


def _accepted(fit: Any, offered: dict[str, Any]) -> dict[str, Any]:
    """Of the keywords ``offered`` (what the composer tells an ensembler's fit: task,
    classes...; the job's device to build()), those ``fit`` takes: a keyword it names, or
    all of them if it takes **kwargs."""
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
