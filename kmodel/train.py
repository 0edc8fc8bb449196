"""Training a model in its env: `kmodel train` and the ensembler's `kmodel compose train`.

The host checks the input and targets, then the runner (kmodel/runner.py) fits the model in
its own env, saves its weights (one .npy per weight, one weights.safetensors, or the model's
own native files) into a temporary folder, with a sample of the training rows and the
trained model's predictions of them; a fresh runner loads the weights and must predict
the sample as the trained model did (else KM304, ``reload_check``). The host refuses any
pickle or file of an unknown format (KM305), writes params.json, provenance.json (what made
the weights and the rows they were trained on) and the manifest of every file
(hashes.json), and renames the folder into place only when all of it is there.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from kmodel import _lock, provenance, weight_formats
from kmodel._fs import atomic_dir, guard_output, remove_stale_temps
from kmodel.defaults import TARGET_NAME
from kmodel.errors import (
    InputSchemaError,
    ModelContractError,
    ModelError,
    SpecError,
    TargetLengthError,
    WeightsNotHashedError,
    WeightsReloadError,
)
from kmodel.job import Job, Task
from kmodel.launch import Progress, Runner, run_job, started
from kmodel.predict import check_input, ensure_env, model_files
from kmodel.provenance import FolderRecord, TrainedOn
from kmodel.registry import Model, Registry
from kmodel.resources import JobOptions, place_model
from kmodel.weights import PARAMS, RECORD, Weights, params_text, seal, written_by_kmodel


def check_targets(path: Path, name: str) -> None:
    """The training input holds /targets/<name>: numbers, one per row."""
    import numpy as np

    from kmodel.io import hdf5

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
    if np.dtype(found[name][0]).kind not in "biuf":
        raise InputSchemaError(f"{path}: /targets/{name} has dtype {found[name][0]}; "
                               "write numbers")


def train(registry: Registry, name: str, input_path: Path, weights_out: Path, *,
          targets: str = TARGET_NAME, manifest: bool = True,
          record: FolderRecord | None = None, fit_args: dict[str, Any] | None = None,
          trained_from: Path | None = None, progress: Progress | None = None,
          inputs: tuple[Path, ...] = (), columns: Sequence[str] = (),
          options: JobOptions | None = None) -> Weights:
    """Fit model ``name`` on /inputs and /targets/<targets> of ``input_path`` in its env.

    The weights folder appears whole when training succeeded, with params.json,
    provenance.json (``record``, the composer's, completed with what made the weights and
    the rows of ``trained_from``, by default the input, they were trained on) and, with
    ``manifest``, hashes.json (the sha256 of every file), which ``Weights.from_folder``
    checks (into a model's own weights folder the hashes go to its spec instead). An
    existing folder is replaced only if kmodel wrote it. ``inputs`` are further files the
    caller read (e.g. prediction files): the folder may not hold any of them. ``fit_args``:
    what the composer tells an ensembler's fit (task, classes...). ``options``: threads,
    device and where the model's own output goes (default: the spec's resources).
    """
    model = registry.model(name)
    placement = place_model(model, options)
    if model.spec.train is None:
        raise SpecError(model.path, "the model has no train: entry, so kmodel will not fit it",
                        field="train", fix="add `train: {args: {}}` if it can be fitted")
    try:
        own = Weights.of(model)
    except WeightsNotHashedError:  # a new model's first training
        own = None
    guard_output(weights_out, [input_path, *inputs, *model_files(registry, model, None)],
                 folder=True)
    check_input(model, input_path)
    check_targets(input_path, targets)
    listed = own.sha256 if own and _same_folder(own.folder, weights_out) else None
    with _lock.writing(weights_out), contextlib.ExitStack() as stack:
        remove_stale_temps(weights_out)
        with atomic_dir(weights_out, lambda d: written_by_kmodel(d, listed)) as tmp:
            env, _ = ensure_env(registry, model)
            scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="kmodel-reload-"))
            sample = Path(scratch) / "sample.h5"
            job = Job(mode="train", model_name=model.name,
                      model_dir=str(model.folder.resolve()), entrypoint=model.spec.entrypoint,
                      args=model.spec.args, input=str(input_path.resolve()),
                      inputs={i.name: i.dtype for i in model.spec.inputs}, targets=targets,
                      train_args=model.spec.train.args, fit_args=dict(fit_args or {}),
                      weights_out=str(tmp.resolve()), output_name=str(weights_out),
                      columns=list(columns), reload_sample=str(sample),
                      outputs={o.name: [o.dtype, o.shape] for o in model.spec.outputs},
                      threads=placement.threads or 0, device=placement.device)
            # the reload check's runner starts now (with the job's threads): its start-up
            # overlaps the fit
            checker = stack.enter_context(started(env, placement, options))
            outcome = run_job(env, job, progress, options=options)
            if outcome.error is not None:
                raise outcome.error
            weight_formats.check_folder(tmp, model.name, weights_out)  # no pickles
            reload_check(checker, model, tmp, sample, columns, like=job)
            names = weight_formats.names_in(tmp)
            (tmp / PARAMS).write_text(params_text(model.name, model.spec.args,
                                                  model.spec.train.args, names))
            kept = replace(record or FolderRecord(), trained_on=_trained_on(
                trained_from or input_path), column_weights=outcome.column_weights,
                fit_report=outcome.fit_report)
            if manifest:  # (a model's own weights are hashed in its spec: their record
                # stays what the seeded script reproduces on any machine, whatever threads)
                kept = replace(kept, threads=job.threads, device=job.device)
            if manifest and not kept.made:  # (a model's own weights: its spec lists them,
                # so the spec's hash would record itself)
                kept = replace(kept, made=provenance.of_model(registry, model, None).to_attrs())
            (tmp / RECORD).write_text(kept.text())
            sealed = seal(tmp, write=manifest)
    return Weights(weights_out, sealed.sha256, in_spec=False)


#: a reloaded model's prediction matches the trained model's when
#: |reloaded - trained| <= RELOAD_RTOL * |trained| + RELOAD_ATOL * scale, scale being the
#: output's largest magnitude on the sample: rounding (another summation order or thread
#: count, a float32 kernel: ~1e-7 relative) stays far below, a forgotten piece of state (a
#: normalization's mean, a layer) far above
RELOAD_RTOL = 1e-4
RELOAD_ATOL = 1e-6


def reload_check(runner: Runner, model: Model, folder: Path, sample: Path,
                 columns: Sequence[str] = (), like: Job | None = None) -> None:
    """A fresh runner (``runner``, started in the model's env and not used yet: a fresh
    process, so no state of the fit survives) builds the model,
    loads the weights of ``folder`` and predicts the training rows of ``sample`` (which
    the training runner wrote with the trained model's predictions, /trained); any value
    beyond the tolerance is WeightsReloadError (KM304), naming the output, the largest
    difference and its row. The job has the threads and device of the training job
    ``like`` (the runner was started with them)."""
    import numpy as np

    from kmodel.io import hdf5

    rows = hdf5.count_ids(sample)
    if not rows:
        return
    out = sample.with_name("reloaded.h5")
    job = Job(mode="predict", model_name=model.name, model_dir=str(model.folder.resolve()),
              entrypoint=model.spec.entrypoint, args=model.spec.args,
              inputs={i.name: i.dtype for i in model.spec.inputs},
              outputs={o.name: [o.dtype, o.shape] for o in model.spec.outputs},
              weights_dir=str(folder.resolve()),
              weights=sorted(p.name for p in folder.iterdir()), batch_size=rows,
              host_pid=os.getpid(), columns=list(columns),
              tasks=[Task(input=str(sample), output=str(out), output_name=str(out), start=0,
                          stop=rows)],
              threads=like.threads if like else 0, device=like.device if like else "cpu")
    outcome = runner.run(job)
    if outcome.error is not None:
        e = outcome.error
        if isinstance(e, (ModelError, ModelContractError)):
            said = e.message.removeprefix(f"model {model.name!r}").removeprefix(": ").strip()
            raise WeightsReloadError(f"model {model.name!r}: loading the weights it saved into "
                                     f"a fresh model failed: {said}", detail=e.detail)
        raise e
    ids = hdf5.read_ids(sample)
    for spec in model.spec.outputs:
        name = spec.name
        a = np.asarray(hdf5.read_column(sample, f"trained/{name}"), np.float64)
        b = np.asarray(hdf5.read_column(out, f"preds/{name}"), np.float64)
        finite = np.abs(a[np.isfinite(a)])
        scale = float(finite.max()) if finite.size else 0.0
        with np.errstate(invalid="ignore"):
            diff = np.abs(b - a)
            ok = (a == b) | (np.isnan(a) & np.isnan(b)) | (
                diff <= RELOAD_ATOL * scale + RELOAD_RTOL * np.abs(a))
        if ok.all():
            continue
        bad = np.where(ok, -1.0, np.nan_to_num(diff, nan=np.inf))
        at = np.unravel_index(int(np.argmax(bad)), bad.shape)
        row = ids[at[0]].decode(errors="replace")
        raise WeightsReloadError(
            f"model {model.name!r}: the weights it saved do not reproduce it: reloaded in a "
            f"fresh model, output {name!r} differs by up to {float(bad[at]):.4g} (trained "
            f"{a[at]:.6g}, reloaded {b[at]:.6g} at id {row!r}; {int((~ok).sum())} of "
            f"{ok.size} values of {rows} training rows beyond {RELOAD_RTOL:g} relative + "
            f"{RELOAD_ATOL:g} x {scale:.3g}); make its set_weights()/load() restore every "
            "piece of state its predict uses (a normalization's mean, say), then train again")


def _trained_on(path: Path) -> TrainedOn:
    from kmodel.io import hdf5

    return TrainedOn.of(path, hdf5.read_ids(path))


def _same_folder(a: Path, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


__all__ = ["check_targets", "train"]
