"""The in-env runner: executed by a model env's own python, by file path.

    <env>/bin/python runner.py JOB.json

It imports nothing from kmodel's core (only kmodel/io/hdf5.py, loaded by file path), so
nothing of kmodel is installed into model envs. It builds the model from its entrypoint and
hyperparameters, then either predicts (streaming batches into an HDF5 file) or trains
(fit on the whole input, then writes params.json + one .npy per weight).

Protocol: progress lines ``KMODEL-PROGRESS <done> <total>`` on stdout; on failure the
traceback on stderr, then one line ``KMODEL-ERROR <json>`` on stderr and exit code 3.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

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


class JobError(Exception):
    """A problem the runner reports as one line (kind is a stable word)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def build_model(job: dict[str, Any]) -> Any:
    model_dir = Path(job["model_dir"])
    file, func = job["entrypoint"].split(":")
    sys.path.insert(0, str(model_dir))
    module = _load_module(f"kmodel_model_{Path(file).stem}", model_dir / file)
    if not hasattr(module, func):
        raise JobError("entrypoint", f"{model_dir / file} defines no function {func!r}")
    model = getattr(module, func)(**job.get("args", {}))
    if job.get("weights_dir"):
        folder = Path(job["weights_dir"])
        weights = {n[:-4]: np.load(folder / n, allow_pickle=False)
                   for n in job["weights"] if n.endswith(".npy")}
        model.set_weights(weights)
    return model


def _as_outputs(result: Any, outputs: dict[str, Any], rows: int) -> dict[str, np.ndarray]:
    if not isinstance(result, dict):
        if len(outputs) != 1:
            raise JobError("output", f"predict returned one array, the spec names outputs "
                           f"{list(outputs)}; return a dict")
        result = {next(iter(outputs)): result}
    out = {}
    for name, (dtype, shape) in outputs.items():
        if name not in result:
            raise JobError("output", f"predict returned no {name!r} (got {list(result)})")
        arr = np.asarray(result[name])
        want = (rows, *shape)
        if arr.shape != want and arr.size == np.prod(want):
            arr = arr.reshape(want)
        if arr.shape != want:
            raise JobError("output", f"predict returned shape {arr.shape} for {name!r}, "
                           f"the spec says {want}")
        out[name] = arr.astype(dtype, copy=False)
    return out


def predict(job: dict[str, Any], model: Any) -> None:
    dtypes = job["inputs"]  # name -> the dtype the spec promises the model
    names = list(dtypes)
    outputs = {k: (v[0], tuple(v[1])) for k, v in job["outputs"].items()}
    path = Path(job["input"])
    _, total = hdf5.describe(path)
    id_dtype = hdf5.id_dtype(path)
    attrs = {**job.get("attrs", {}), "env_python_version": platform.python_version(),
             "env_numpy_version": np.__version__}
    writer = hdf5.PredictionWriter(Path(job["output"]), outputs, total, id_dtype,
                                   job["batch_size"], attrs, job.get("resume", False))
    start = writer.rows_done
    if start:
        _progress(start, total)
    last, complete = 0.0, False
    try:
        for lo, ids, batch in hdf5.iter_batches(path, names, job["batch_size"], start):
            if job.get("host_pid") and os.getppid() != job["host_pid"]:
                raise JobError("orphaned", "kmodel (the host process) is gone; stopping")
            batch = {k: v.astype(dtypes[k], copy=False) for k, v in batch.items()}
            result = model.predict(batch[names[0]] if len(names) == 1 else batch)
            writer.write(lo, ids, _as_outputs(result, outputs, len(ids)))
            now = time.monotonic()
            if now - last > 0.2:
                _progress(writer.rows_done, total)
                last = now
        complete = writer.rows_done == total
    finally:
        writer.close(complete)
    _progress(total, total)


def train(job: dict[str, Any], model: Any) -> None:
    names = list(job["inputs"])
    arrays, _ = hdf5.read_group(Path(job["input"]), "inputs", names)
    targets, _ = hdf5.read_group(Path(job["input"]), "targets", [job["targets"]])
    x = arrays[names[0]] if len(names) == 1 else arrays
    model.fit(x, targets[job["targets"]], **job.get("train_args", {}))
    weights = {k: np.asarray(v) for k, v in model.get_weights().items()}
    out = Path(job["weights_out"])
    out.mkdir(parents=True, exist_ok=True)
    for name, arr in weights.items():
        np.save(out / f"{name}.npy", arr, allow_pickle=False)
    params = {"model": job.get("model_name"), "args": job.get("args", {}),
              "train_args": job.get("train_args", {}), "weights": sorted(weights)}
    (out / "params.json").write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")


def _progress(done: int, total: int) -> None:
    sys.stdout.write(f"KMODEL-PROGRESS {done} {total}\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[1]).read_text())
    try:
        model = build_model(job)
        (train if job["mode"] == "train" else predict)(job, model)
    except JobError as e:
        kind, message = e.kind, str(e)
    except Exception as e:  # the model's own code raised: report it, traceback above
        traceback.print_exc()
        kind, message = "model", f"{type(e).__name__}: {e}"
    else:
        return 0
    sys.stderr.write("KMODEL-ERROR " + json.dumps({"kind": kind, "message": message}) + "\n")
    return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv))
