"""Host side of prediction and training: checks, env, runner process, progress, finalising.

The host never imports model code: it writes a JSON job and starts ``runner.py`` with the
model env's own python.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kmodel import __version__, _subprocess
from kmodel._fs import atomic_dir, cached_sha256, ensure_parent, sha256_bytes, sha256_file
from kmodel.envs import Env, backend_for
from kmodel.errors import (
    HashMismatchError,
    InputMissingError,
    InputSchemaError,
    Interrupted,
    ModelError,
    OutputNotWritableError,
    ResumeMismatchError,
    RunnerError,
    RunnerKilledError,
    SpecError,
    WeightsMissingError,
)
from kmodel.io import hdf5
from kmodel.registry import Model, Registry

log = logging.getLogger("kmodel")
RUNNER = Path(__file__).with_name("runner.py")
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Weights:
    """A weights folder and the sha256 of each of its files."""

    folder: Path
    sha256: dict[str, str]

    @property
    def digest(self) -> str:
        return sha256_bytes(json.dumps(self.sha256, sort_keys=True).encode())

    @classmethod
    def of(cls, model: Model) -> Weights | None:
        if model.spec.weights is None or model.weights_dir is None:
            return None
        return cls(model.weights_dir, dict(model.spec.weights.sha256))

    @classmethod
    def from_folder(cls, folder: Path) -> Weights:
        """Weights trained by kmodel: the folder's hashes.json lists every file's sha256."""
        try:
            return cls(folder, json.loads((folder / "hashes.json").read_text()))
        except FileNotFoundError:
            raise WeightsMissingError(folder.name, folder / "hashes.json",
                                      "train them first (kmodel compose train)") from None

    def verify(self, model: str, fix: str) -> None:
        for name, expected in self.sha256.items():
            path = self.folder / name
            if not path.is_file():
                raise WeightsMissingError(model, path)
            found = sha256_file(path)
            if found != expected:
                raise HashMismatchError(path, expected, found, fix)


def check_input(model: Model, path: Path) -> int:
    """Check the input file against the spec's inputs before any env starts; return rows."""
    if not path.is_file():
        raise InputMissingError(path)
    try:
        found, rows = hdf5.describe(path, "inputs")
    except hdf5.MissingIds:
        raise InputSchemaError(f"{path}: no /metadata/id; write one id per row (predictions "
                               "are aligned by id)") from None
    except (OSError, KeyError, ValueError) as e:
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
    return rows


def ensure_env(registry: Registry, model: Model) -> tuple[Env, Path]:
    """Build (or find) the model's env; return it with its lockfile."""
    ref = registry.env_of(model)
    backend = backend_for(ref)
    return backend.ensure(ref), ref.lockfile


def partial_path(output: Path) -> Path:
    return output.with_name(output.name + ".partial")


def predict(registry: Registry, name: str, input_path: Path, output: Path, *,
            batch_size: int = 8192, resume: bool = False, weights: Weights | None = None,
            progress: Progress | None = None) -> Path:
    """Run model ``name`` on ``input_path`` and write ``output`` (atomically)."""
    model = registry.model(name)
    check_input(model, input_path)  # before any env is built or started
    weights = weights or Weights.of(model)
    if weights:
        weights.verify(name, f"restore the file or run `kmodel hash {name} --write`")
    ensure_parent(output)
    env, lockfile = ensure_env(registry, model)
    partial = partial_path(output)
    if _in_use(partial):
        raise OutputNotWritableError(output, f"another process is writing it ({partial.name} "
                                     "is locked); wait for it or choose another output")
    attrs = {
        "kmodel_version": __version__, "model": model.name,
        "model_version": model.spec.version, "spec_sha256": sha256_file(model.path),
        "weights_sha256": weights.digest if weights else "", "lock_sha256":
        sha256_file(lockfile), "env_key": env.key, "batch_size": batch_size,
    }
    st = input_path.stat()
    attrs["input_signature"] = f"{input_path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    resume = resume and partial.exists() and _resumable(partial, attrs)
    job = {
        "mode": "predict", "model_name": model.name, "model_dir": str(model.folder.resolve()),
        "entrypoint": model.spec.entrypoint, "args": model.spec.args,
        "weights_dir": str(weights.folder.resolve()) if weights else None,
        "weights": sorted(weights.sha256) if weights else [],
        "input": str(input_path.resolve()), "inputs": {i.name: i.dtype for i in model.spec.inputs},
        "outputs": {o.name: [o.dtype, o.shape] for o in model.spec.outputs},
        "output": str(partial.resolve()), "batch_size": batch_size, "attrs": attrs,
        "resume": resume, "host_pid": os.getpid(),
    }
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        input_hash = pool.submit(cached_sha256, input_path)  # overlaps with the runner
        try:
            run_job(env, job, name, progress)
        except BaseException as e:
            if not isinstance(e, RunnerKilledError):  # a kill leaves the partial for --resume
                with contextlib.suppress(FileNotFoundError):
                    partial.unlink()
            raise
        hdf5.set_attrs(partial, {"input_sha256": input_hash.result(),
                                 "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    os.replace(partial, output)
    return output


def _in_use(partial: Path) -> bool:
    """True if a running writer holds the partial file (HDF5 locks files it writes)."""
    import fcntl

    try:
        with open(partial, "rb") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
    except FileNotFoundError:
        pass
    return False


def _resumable(partial: Path, attrs: dict[str, Any]) -> bool:
    """True if ``partial`` can be continued; raise if it belongs to another run."""
    try:
        found = hdf5.read_attrs(partial)
    except OSError:
        log.warning("%s is unreadable (killed mid-write); starting over", partial)
        return False
    for key in ("model", "spec_sha256", "weights_sha256", "lock_sha256", "batch_size",
                "input_signature"):
        if found.get(key) != attrs[key]:
            what = "input" if key == "input_signature" else key
            raise ResumeMismatchError(
                f"{partial} was written by another run (different {what}); refusing to "
                "append to it: delete it or run without --resume")
    log.info("resuming %s from row %d", partial, found.get(hdf5.ROWS_DONE, 0))
    return True


def train(registry: Registry, name: str, input_path: Path, targets: str, weights_out: Path,
          *, manifest: bool = True, extra: dict[str, str] | None = None,
          progress: Progress | None = None) -> Weights:
    """Fit model ``name`` on /inputs and /targets/<targets> of ``input_path`` in its env.

    The weights folder appears whole when training succeeded; with ``manifest`` it also
    holds hashes.json (the sha256 of every file), which ``Weights.from_folder`` checks.
    """
    model = registry.model(name)
    if model.spec.train is None:
        raise SpecError(model.path, "the model has no train: entry, so kmodel will not fit it",
                        field="train", fix="add `train: {args: {}}` if it can be fitted")
    check_input(model, input_path)
    env, _ = ensure_env(registry, model)
    with atomic_dir(weights_out) as tmp:
        job = {
            "mode": "train", "model_name": model.name,
            "model_dir": str(model.folder.resolve()), "entrypoint": model.spec.entrypoint,
            "args": model.spec.args, "input": str(input_path.resolve()),
            "inputs": {i.name: i.dtype for i in model.spec.inputs}, "targets": targets,
            "train_args": model.spec.train.args,
            "weights_out": str(tmp.resolve()),
        }
        run_job(env, job, name, progress)
        for file, text in (extra or {}).items():
            (tmp / file).write_text(text)
        hashes = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        if manifest:
            (tmp / "hashes.json").write_text(json.dumps(hashes, indent=2, sort_keys=True) + "\n")
    return Weights(weights_out, hashes)


@contextlib.contextmanager
def _job_file(job: dict[str, Any]) -> Iterator[Path]:
    fd, name = tempfile.mkstemp(prefix="kmodel-job-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(job, f)
        yield Path(name)
    finally:
        os.unlink(name)


def run_job(env: Env, job: dict[str, Any], model: str, progress: Progress | None) -> None:
    """Start the runner in ``env`` on ``job``; relay progress; map failures to errors."""
    run_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    run_env["PYTHONNOUSERSITE"] = "1"
    with _job_file(job) as job_path:
        proc = _subprocess.popen([env.python, RUNNER, job_path], env=run_env)
        stderr: list[str] = []
        drain = threading.Thread(target=lambda: stderr.extend(proc.stderr or []), daemon=True)
        drain.start()
        try:
            for line in proc.stdout or []:
                if line.startswith("KMODEL-PROGRESS ") and progress:
                    done, total = line.split()[1:3]
                    progress(int(done), int(total))
            code = proc.wait()
        except KeyboardInterrupt:
            _subprocess.stop(proc)
            raise Interrupted() from None
        except BaseException:
            _subprocess.stop(proc)
            raise
        drain.join()
    if code == 0:
        return
    text = "".join(stderr)
    if code < 0:
        sig = signal.Signals(-code).name
        raise RunnerKilledError(f"model {model!r}: the runner was killed by {sig} "
                                "(out of memory or a time limit?); rerun, with --resume for "
                                "predict", detail=text)
    report = next((ln for ln in reversed(stderr) if ln.startswith("KMODEL-ERROR ")), None)
    if report is None:
        last = text.strip().splitlines()[-1] if text.strip() else f"exit code {code}"
        raise RunnerError(f"model {model!r}: the runner failed in env {env.prefix}: {last}; "
                          "rebuild the env (delete it, then `kmodel env create`)", detail=text)
    info = json.loads(report[len("KMODEL-ERROR "):])
    if info["kind"] == "model":
        raise ModelError(f"model {model!r} raised {info['message']}; run with -v for its "
                         "traceback", detail=text)
    raise SpecError(Path(job["model_dir"]) / "model.yaml", info["message"],
                    field=info["kind"], fix="fix the model code or its spec")
