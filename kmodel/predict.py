"""Host side of prediction and training: checks, env, runner process, progress, finalising.

The host never imports model code: it writes a JSON job and starts ``runner.py`` with the
model env's own python. It trusts nothing the runner says: a prediction is renamed to its
final name only after the host has read back that every row was written, from the input
it started with.

Files of one ``predict -o OUT``, all under a lock kmodel holds for the whole run
(``OUT.lock``): the runner writes ``OUT.partial-<run id>`` (created exclusively, unique to
the run); it becomes OUT when complete, ``OUT.partial`` (for ``--resume``) when the run is
interrupted or the runner killed, and is removed when the model fails. A run killed with
SIGKILL leaves its working file behind; the next run on OUT adopts it as ``OUT.partial``.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import re
import shlex
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from kmodel import __version__, _lock, _subprocess
from kmodel._fs import (
    atomic_dir,
    cached_sha256,
    check_input_file,
    file_signature,
    guard_output,
    remove_stale_temps,
    sha256_file,
    write_error,
)
from kmodel.envs import Env, backend_for
from kmodel.errors import (
    InputChangedError,
    InputSchemaError,
    Interrupted,
    KmodelError,
    ModelContractError,
    ModelError,
    OutputNotWritableError,
    ResumeMismatchError,
    RunnerError,
    RunnerKilledError,
    SpecError,
    TargetLengthError,
    signum_of,
)
from kmodel.io import hdf5
from kmodel.registry import Model, Registry
from kmodel.weights import MANIFEST, Weights, written_by_kmodel

log = logging.getLogger("kmodel")
RUNNER = Path(__file__).with_name("runner.py")
Progress = Callable[[int, int], None]
__all__ = ["Progress", "Weights", "check_input", "ensure_env", "predict", "train"]


def check_input(model: Model, path: Path) -> int:
    """Check the input file against the spec's inputs before any env starts; return rows."""
    check_input_file(path)
    try:
        found, rows = hdf5.describe(path, "inputs")
    except hdf5.MissingIds:
        raise InputSchemaError(f"{path}: no /metadata/id; write one id per row (predictions "
                               "are aligned by id)") from None
    except hdf5.LayoutError as e:
        raise InputSchemaError(f"{path}: {e}") from None
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise InputSchemaError(f"{path}: not a kmodel input file ({e}); write /inputs/<name> "
                               "and /metadata/id") from None
    for spec in model.spec.inputs:
        if spec.name not in found:
            raise InputSchemaError(f"{path}: no dataset /inputs/{spec.name} required by model "
                                   f"{model.name!r} (found {sorted(found) or 'none'}); "
                                   "rename the dataset or fix the spec's inputs")
        dtype, shape = found[spec.name]
        if not np.can_cast(np.dtype(dtype), np.dtype(spec.dtype), "same_kind"):
            raise InputSchemaError(f"{path}: /inputs/{spec.name} has dtype {dtype}, model "
                                   f"{model.name!r} expects {spec.dtype}; convert the data")
        if len(shape) != len(spec.shape) or any(
                w is not None and w != s for w, s in zip(spec.shape, shape, strict=True)):
            want = tuple("*" if w is None else w for w in spec.shape)
            raise InputSchemaError(f"{path}: /inputs/{spec.name} has rows of shape {shape}, "
                                   f"model {model.name!r} expects {want}; reshape the data")
    if rows == 0:
        raise InputSchemaError(f"{path}: no rows (/metadata/id is empty); nothing to predict")
    return rows


def check_targets(path: Path, name: str) -> None:
    """The training input holds /targets/<name>, one value per row."""
    try:
        found, _ = hdf5.describe(path, "targets")
    except hdf5.LengthError as e:
        raise TargetLengthError(f"{path}: {e}; they must match") from None
    except (hdf5.LayoutError, OSError) as e:
        raise InputSchemaError(f"{path}: {e}") from None
    if name not in found:
        raise InputSchemaError(f"{path}: no /targets/{name} to train on (found "
                               f"{sorted(found) or 'none'}); write it, or name another with "
                               "--target-name")


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


def partial_path(output: Path) -> Path:
    return output.with_name(output.name + ".partial")


def _busy(output: Path) -> Callable[[str], KmodelError]:
    return lambda who: OutputNotWritableError(
        output, f"another kmodel run ({who}) is writing it",
        "wait for it to finish or choose another output")


_WORK_SUFFIX = re.compile(r"\.partial-[0-9a-f]{8}$")


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
            os.replace(p, partial_path(output))
            log.info("kept the partial predictions of a killed run as %s", partial_path(output))
        except OSError:
            pass  # OUT.partial is a folder, say: leave both where they are


def _resumable(partial: Path, attrs: dict[str, Any], input_path: Path) -> bool:
    """True if ``partial`` can be continued; False to start over; raise if it belongs to
    another run (other model, spec, weights, lock, batch size or input)."""
    try:
        st = partial.lstat()
    except FileNotFoundError:
        log.info("no %s to resume; starting from the first row", partial.name)
        return False
    if not stat.S_ISREG(st.st_mode):
        raise ResumeMismatchError(f"{partial} is not a file kmodel wrote (a symlink or a "
                                  "folder); remove it, or run without --resume")
    try:
        found = hdf5.read_attrs(partial)
    except OSError:
        log.warning("%s is unreadable (killed mid-write); starting over", partial)
        return False
    for key in ("model", "spec_sha256", "weights_sha256", "lock_sha256", "batch_size"):
        if found.get(key) != attrs[key]:
            raise ResumeMismatchError(
                f"{partial} was written by another run (different {key}); refusing to "
                "append to it: delete it or run without --resume")
    if found.get("input_signature") != attrs["input_signature"]:
        # the input was rewritten, copied or touched since: resume only if its bytes match
        recorded = found.get("input_sha256")
        if not recorded or recorded != cached_sha256(input_path):
            raise ResumeMismatchError(
                f"{partial} was written from a different input (or {input_path} changed "
                "since); refusing to append to it: delete it or run without --resume")
    log.info("resuming %s from row %d", partial, found.get(hdf5.ROWS_DONE, 0))
    return True


class _Hash:
    """The input's sha256, computed in a daemon thread alongside the runner (never waited
    for when the run is interrupted)."""

    def __init__(self, path: Path) -> None:
        self.value: str | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(path,), daemon=True)
        self.thread.start()

    def _run(self, path: Path) -> None:
        try:
            self.value = cached_sha256(path)
        except BaseException as e:
            self.error = e

    def result(self, timeout: float | None = None) -> str | None:
        self.thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.value


def predict(registry: Registry, name: str, input_path: Path, output: Path, *,
            batch_size: int = 8192, resume: bool = False, weights: Weights | None = None,
            progress: Progress | None = None) -> Path:
    """Run model ``name`` on ``input_path`` and write ``output`` (atomically)."""
    model = registry.model(name)
    weights = weights or Weights.of(model)
    guard_output(output, [input_path, *model_files(registry, model, weights)],
                 siblings=(".partial", ".lock"))
    check_input(model, input_path)  # before any env is built or started
    if weights:
        weights.verify(name, f"restore the file or run `kmodel hash {name} --write`")
    with _lock.held(_lock.lock_path(output), _busy(output)):
        _adopt_killed(output)
        env, lockfile = ensure_env(registry, model)
        signature = file_signature(input_path)
        attrs: dict[str, Any] = {
            "kmodel_version": __version__, "model": model.name,
            "model_version": model.spec.version, "spec_sha256": sha256_file(model.path),
            "weights_sha256": weights.digest if weights else "",
            "lock_sha256": sha256_file(lockfile), "env_key": env.key,
            "batch_size": batch_size,
            "input_signature": f"{os.path.realpath(input_path)}|{signature}",
        }
        partial = partial_path(output)
        resumed = resume and _resumable(partial, attrs, input_path)
        work = output.with_name(f"{output.name}.partial-{os.urandom(4).hex()}")
        if resumed:
            os.replace(partial, work)  # a regular file (checked), renamed: never followed
        job = {
            "mode": "predict", "model_name": model.name,
            "model_dir": str(model.folder.resolve()), "entrypoint": model.spec.entrypoint,
            "args": model.spec.args,
            "weights_dir": str(weights.folder.resolve()) if weights else None,
            "weights": sorted(weights.sha256) if weights else [],
            "input": str(input_path.resolve()),
            "inputs": {i.name: i.dtype for i in model.spec.inputs},
            "outputs": {o.name: [o.dtype, o.shape] for o in model.spec.outputs},
            "output": str(work.resolve()), "output_name": str(output),
            "batch_size": batch_size, "attrs": attrs,
            "resume": resumed, "host_pid": os.getpid(),
        }
        again = shlex.join(["kmodel", "predict", name, "-i", str(input_path), "-o",
                            str(output), "--batch-size", str(batch_size), "--resume"])
        input_hash = _Hash(input_path)  # overlaps with the runner
        try:
            run_job(env, job, name, progress)
            total = _check_complete(work, name)
            if not _unchanged(input_path, signature):
                raise InputChangedError(
                    f"{input_path} changed while model {name!r} was predicting; the "
                    "predictions would mix two inputs, so none were kept: rerun")
            hdf5.set_attrs(work, {"input_sha256": input_hash.result(),
                                  "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            os.replace(work, output)
        except (Interrupted, RunnerKilledError, KeyboardInterrupt) as e:
            kept, where = _keep_partial(work, partial, input_hash, resumed)
            what = (f"{kept} rows kept in {where}; continue with `{again}`" if kept
                    else "temporary files were removed")
            if isinstance(e, RunnerKilledError):
                raise RunnerKilledError(e.what, what if kept else "no rows were written; rerun",
                                        detail=e.detail) from None
            raise Interrupted(e.signum if isinstance(e, Interrupted) else signum_of(e),
                              what) from None
        except OSError as e:
            _discard(work, partial, resumed)
            raise write_error(output, e) from None
        except BaseException:
            _discard(work, partial, resumed)
            raise
        with contextlib.suppress(OSError):  # superseded by the finished output
            if stat.S_ISREG(partial.lstat().st_mode):
                partial.unlink()
    log.debug("wrote %s (%d rows)", output, total)
    return output


def _unchanged(path: Path, signature: str) -> bool:
    try:
        return file_signature(path) == signature
    except OSError:
        return False  # deleted or replaced


def _keep_partial(work: Path, partial: Path, input_hash: _Hash,
                  resumed: bool) -> tuple[int, Path]:
    """Keep an interrupted run's rows as OUT.partial for --resume; return how many, where."""
    try:
        done = int(hdf5.read_attrs(work).get(hdf5.ROWS_DONE, 0))
    except OSError:
        done = 0
    if done == 0:
        _discard(work, partial, resumed)
        return 0, partial
    with contextlib.suppress(Exception):
        digest = input_hash.result(timeout=0)
        if digest:  # lets --resume accept the input even if it is copied or touched
            hdf5.set_attrs(work, {"input_sha256": digest})
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


def _check_complete(path: Path, model: str) -> int:
    """Every row written and the complete flag set, read back from the file; return rows."""
    try:
        attrs = hdf5.read_attrs(path)
        _, total = hdf5.describe(path, "preds")
    except (OSError, ValueError) as e:
        raise ModelContractError(f"model {model!r}: the runner reported success but its "
                                 f"output is unreadable ({e}); rerun") from None
    done = int(attrs.get(hdf5.ROWS_DONE, -1))
    if done != total or not attrs.get(hdf5.COMPLETE):
        raise ModelContractError(
            f"model {model!r} stopped after {max(done, 0)} of {total} rows without an error "
            "(did its code call sys.exit or os._exit?); nothing was kept: fix the model")
    return total


def train(registry: Registry, name: str, input_path: Path, targets: str, weights_out: Path,
          *, manifest: bool = True, extra: dict[str, str] | None = None,
          progress: Progress | None = None, inputs: tuple[Path, ...] = ()) -> Weights:
    """Fit model ``name`` on /inputs and /targets/<targets> of ``input_path`` in its env.

    The weights folder appears whole when training succeeded; with ``manifest`` it also
    holds hashes.json (the sha256 of every file), which ``Weights.from_folder`` checks. An
    existing folder is replaced only if kmodel wrote it. ``inputs`` are further files the
    caller read (e.g. prediction files): the folder may not hold any of them.
    """
    model = registry.model(name)
    if model.spec.train is None:
        raise SpecError(model.path, "the model has no train: entry, so kmodel will not fit it",
                        field="train", fix="add `train: {args: {}}` if it can be fitted")
    own = Weights.of(model)
    guard_output(weights_out, [input_path, *inputs, *model_files(registry, model, None)],
                 folder=True)
    check_input(model, input_path)
    check_targets(input_path, targets)
    listed = own.sha256 if own and _same_folder(own.folder, weights_out) else None
    with _lock.held(_lock.lock_path(weights_out), _busy(weights_out)):
        remove_stale_temps(weights_out)
        with atomic_dir(weights_out, lambda d: written_by_kmodel(d, listed)) as tmp:
            env, _ = ensure_env(registry, model)
            job = {
                "mode": "train", "model_name": model.name,
                "model_dir": str(model.folder.resolve()), "entrypoint": model.spec.entrypoint,
                "args": model.spec.args, "input": str(input_path.resolve()),
                "inputs": {i.name: i.dtype for i in model.spec.inputs}, "targets": targets,
                "train_args": model.spec.train.args,
                "weights_out": str(tmp.resolve()), "output_name": str(weights_out),
            }
            run_job(env, job, name, progress)
            for file, text in (extra or {}).items():
                (tmp / file).write_text(text)
            hashes = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
            if manifest:
                (tmp / MANIFEST).write_text(json.dumps(hashes, indent=2, sort_keys=True) + "\n")
    return Weights(weights_out, hashes)


def _same_folder(a: Path, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


@contextlib.contextmanager
def _job_file(job: dict[str, Any]) -> Iterator[Path]:
    fd, name = tempfile.mkstemp(prefix="kmodel-job-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(job, f)
        yield Path(name)
    finally:
        os.unlink(name)


def _events(fd: int, progress: Progress | None) -> Iterator[dict[str, Any]]:
    """The runner's protocol messages (JSON lines on a pipe of their own)."""
    with os.fdopen(fd, "rb") as channel:
        for line in channel:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            if event.get("event") == "progress" and progress:
                progress(int(event["done"]), int(event["total"]))
            yield event


def run_job(env: Env, job: dict[str, Any], model: str, progress: Progress | None) -> None:
    """Start the runner in ``env`` on ``job``; relay progress; map failures to errors."""
    run_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    with _job_file(job) as job_path:
        read_fd, write_fd = os.pipe()
        try:
            proc = _subprocess.popen([env.python, "-I", "-X", "faulthandler", RUNNER, job_path,
                                      str(write_fd)],
                                     env=run_env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, pass_fds=(write_fd,))
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        assert proc.stdout is not None
        output = _subprocess.Tail(proc.stdout)
        events: list[dict[str, Any]] = []
        try:
            for event in _events(read_fd, progress):
                if event.get("event") != "progress":
                    events.append(event)
            code = proc.wait()
        except BaseException:
            _subprocess.stop(proc)
            raise
    _raise_failure(env, job, model, code, events, output.text())


def _raise_failure(env: Env, job: dict[str, Any], model: str, code: int,
                   events: list[dict[str, Any]], text: str) -> None:
    """Nothing if the runner says it finished; else the error that says what happened."""
    kinds = {e.get("event") for e in events}
    error = next((e for e in events if e.get("event") == "error"), None)
    if code == 0 and "done" in kinds and error is None:
        return
    if code < 0 and error is None:
        sig = signal.Signals(-code)
        if sig.name == "SIGXFSZ":
            raise OutputNotWritableError(Path(job["output_name"]),
                                         "the file size limit was reached (ulimit -f)",
                                         "raise the limit or choose another location")
        raise RunnerKilledError(f"model {model!r}: the runner was killed by {sig.name} "
                                "(out of memory or a time limit?)", detail=text)
    if error is None:
        if "ready" not in kinds:
            last = text.strip().splitlines()[-1] if text.strip() else f"exit code {code}"
            raise RunnerError(f"model {model!r}: the runner could not start in env "
                              f"{env.prefix}: {last}; rebuild the env (delete it, then "
                              "`kmodel env create`)", detail=text)
        raise ModelContractError(
            f"model {model!r}: its process exited with status {code} before finishing, "
            "without an error (its code may call os._exit, or it crashed in C code); run "
            "with -v for its output", detail=text)
    kind, message = str(error.get("kind")), str(error.get("message", "")).splitlines()
    first = message[0] if message else "no message"
    detail = str(error.get("traceback") or "") + text[-4000:]
    if kind == "model":
        raise ModelError(f"model {model!r} raised {first}; run with -v for its traceback",
                         detail=detail)
    if kind in ("exit", "output"):
        what = f"{first} part-way" if kind == "exit" else first
        raise ModelContractError(f"model {model!r}: {what}; fix the model's code (kmodel keeps "
                                 "nothing it did not check)", detail=detail)
    if kind == "write":
        info = json.loads(first)
        e = OSError(info["errno"], info.get("message") or os.strerror(info["errno"]))
        raise write_error(Path(job["output_name"]), e)
    if kind in ("stopped", "orphaned"):
        raise RunnerKilledError(f"model {model!r}: the runner was stopped ({first})",
                                detail=detail)
    raise SpecError(Path(job["model_dir"]) / "model.yaml", first, field=kind,
                    fix="fix the model code or its spec")
