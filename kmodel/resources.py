"""What a model's job runs with: CPU threads and a device (the CPU or a GPU).

A spec's ``resources: {threads, mem_mb, gpus}`` and ``device: cpu | cuda | auto`` give the
defaults (a composition may override the resources per model); ``kmodel predict --threads N
--device D`` overrides both. A job that asks for a GPU where none is visible is refused
here, before its env starts (KM510); ``auto`` runs on the CPU then.

GPUs are counted without importing a framework (the host never imports model code): the
NVIDIA driver's entries under /proc and /dev, narrowed by CUDA_VISIBLE_DEVICES, which a
scheduler (SLURM's gres, Snakemake) sets to the devices it assigned to the job. A model
given ``cuda`` or ``cuda:i`` sees device i among those.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kmodel.errors import DeviceUnavailableError, UsageError

#: the thread-count variables of the common BLAS and OpenMP runtimes: a runner imports
#: numpy at start, so they are set in its environment, before it starts
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS",
               "GOTO_NUM_THREADS")
DEVICES = ("cpu", "cuda", "auto")
_DEVICE_RE = re.compile(r"^(cpu|auto|cuda(:\d+)?)$")


@dataclass(frozen=True)
class Placement:
    """Where a job runs: its CPU threads (None: the libraries' own default, nothing set)
    and its device ("cpu", "cuda" or "cuda:i")."""

    threads: int | None = None
    device: str = "cpu"

    def environ(self, base: Mapping[str, str]) -> dict[str, str]:
        """``base`` with the thread variables set to the job's threads (if it has some)."""
        env = dict(base)
        if self.threads is not None:
            env.update(dict.fromkeys(THREAD_VARS, str(self.threads)))
        return env


@dataclass(frozen=True)
class JobOptions:
    """How to run a model's job, given for this run: its threads and device (None: the
    spec's), where its own stdout and stderr go as they come (``log``: appended to that
    file; ``echo``: kmodel's stderr, as with -v)."""

    threads: int | None = None
    device: str | None = None
    log: Path | None = None
    echo: bool = False


def check_device(value: str) -> str:
    """A device as given on the command line: cpu, cuda, cuda:i or auto."""
    if not _DEVICE_RE.match(value):
        raise UsageError(f"--device {value!r}: give cpu, cuda, cuda:INDEX (e.g. cuda:0) or "
                         "auto")
    return value


def visible_gpus(environ: Mapping[str, str] | None = None) -> int:
    """How many GPUs this process may use: the NVIDIA devices the driver shows, or as many
    as CUDA_VISIBLE_DEVICES lists (empty or -1: none)."""
    environ = os.environ if environ is None else environ
    present = _nvidia_devices()
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return present
    ids = [x.strip() for x in listed.split(",") if x.strip()]
    if not ids or ids[0].startswith("-"):  # CUDA stops at the first invalid entry
        return 0
    return min(len(ids), present) if present else 0


def _nvidia_devices() -> int:
    """The NVIDIA GPUs the driver shows (its /proc entries, else /dev/nvidiaN)."""
    proc = Path("/proc/driver/nvidia/gpus")
    try:
        found = len(list(proc.iterdir()))
    except OSError:
        found = 0
    if found:
        return found
    try:
        return sum(1 for p in Path("/dev").iterdir() if re.fullmatch(r"nvidia\d+", p.name))
    except OSError:
        return 0


def default_device(spec_device: str | None, gpus: int | None) -> str:
    """The device a model's jobs ask for: its spec's ``device:``, else cuda when it is
    given GPUs, else cpu."""
    return spec_device or ("cuda" if gpus else "cpu")


def place_model(model: Any, options: JobOptions | None = None,
                environ: Mapping[str, str] | None = None) -> Placement:
    """The placement of a job of ``model`` (a registry's Model: its name, path and spec)
    with ``options`` given for this run over its spec's resources and device."""
    options = options or JobOptions()
    res = model.spec.resources
    return place(model.name, model.path,
                 threads=options.threads if options.threads is not None else
                 (res.threads if res else None),
                 gpus=(res.gpus or 0) if res else 0, spec_device=model.spec.device,
                 device=options.device, environ=environ)


def place(model: str, spec_path: Path, *, threads: int | None, gpus: int,
          spec_device: str | None, device: str | None = None,
          environ: Mapping[str, str] | None = None) -> Placement:
    """The placement of a job of ``model``: ``threads`` and ``device`` given for the job
    win over the spec's (``gpus``, ``spec_device``). Refuses (KM510) a GPU the job cannot
    see."""
    if threads is not None and threads < 1:
        raise UsageError(f"--threads {threads}: give 1 or more")
    wanted = device or default_device(spec_device, gpus)
    check_device(wanted)
    if wanted == "cpu":
        return Placement(threads, "cpu")
    seen = visible_gpus(environ)
    if wanted == "auto":
        return Placement(threads, "cuda" if seen else "cpu")
    index = int(wanted.partition(":")[2] or 0)
    if index < seen:
        return Placement(threads, wanted)
    env = os.environ if environ is None else environ
    why = ("this job sees none" if not seen else f"this job sees {seen} (cuda:0 to "
           f"cuda:{seen - 1})")
    if "CUDA_VISIBLE_DEVICES" in env and not seen:
        why += f" (CUDA_VISIBLE_DEVICES is {env['CUDA_VISIBLE_DEVICES']!r})"
    asked = (f"--device {device}" if device else
             f"device: {spec_device} in {spec_path}" if spec_device else
             f"resources.gpus: {gpus} in {spec_path}")
    fix = ("give --device cpu or --device auto" if device else
           "give --device cpu, or allow `device: auto` in its spec")
    raise DeviceUnavailableError(
        f"model {model!r} asks for GPU {wanted} ({asked}) but {why}; run it where a GPU is "
        f"(a GPU node, `gpus:` in its resources), or {fix}")
