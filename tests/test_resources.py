"""Resources per model (threads, memory, GPUs; the device) and a model's own output.

Real runs: a probe model in the numpy2 env reports, in its predictions, the thread
variables its process saw and the device its build() was given, and prints to stdout and
stderr. This machine has no GPU: the refusal (KM510) and `device: auto`'s fallback to the
CPU run for real here; the GPU path itself (a model on cuda) cannot run here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kmodel.errors import DeviceUnavailableError, SpecError, UsageError
from kmodel.io import hdf5
from kmodel.loader import load_compose_config, load_model_spec
from kmodel.resources import THREAD_VARS, JobOptions, Placement, place, visible_gpus

from .conftest import REPO, make_input

PROBE = """\
import os
import sys


class Probe:
    def __init__(self, device, torch_threads):
        self.device = device
        self.torch_threads = torch_threads

    def predict(self, x):
        import numpy as np

        print("probe stdout: %d rows" % len(x), flush=True)
        print("probe stderr: on %s" % self.device, file=sys.stderr, flush=True)
        n = len(x)
        omp = int(os.environ.get("OMP_NUM_THREADS", "-1"))
        blas = int(os.environ.get("OPENBLAS_NUM_THREADS", "-1"))
        a = np.ones((256, 256))
        a @ a  # numpy's BLAS starts its thread pool
        tasks = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else -1
        return {"omp": np.full(n, omp), "openblas": np.full(n, blas),
                "cuda": np.full(n, self.device.startswith("cuda")),
                "tasks": np.full(n, tasks)}

    def fit(self, x, y):
        print("probe fit stdout", flush=True)
        print("probe fit stderr", file=sys.stderr, flush=True)
        self.w = {"seen": np.asarray([len(x), int(os.environ.get("OMP_NUM_THREADS", "-1"))])}
        return self

    def get_weights(self):
        return self.w

    def set_weights(self, w):
        self.w = w


import numpy as np


def build(device="unset", torch_threads=0):
    return Probe(device, torch_threads)
"""

PROBE_SPEC = """\
name: probe
version: 0.1.0
env: numpy2
entrypoint: model.py:build
inputs:
  - name: x
    dtype: float32
    shape: [3]
outputs:
  - {{name: omp, dtype: int32, shape: []}}
  - {{name: openblas, dtype: int32, shape: []}}
  - {{name: cuda, dtype: int8, shape: []}}
  - {{name: tasks, dtype: int32, shape: []}}
train:
  args: {{}}
{extra}"""


def add_probe(project: Path, extra: str = "", name: str = "probe",
              code: str = PROBE) -> Path:
    folder = project / "model_specs" / name
    folder.mkdir(exist_ok=True)
    (folder / "model.py").write_text(code)
    (folder / "model.yaml").write_text(PROBE_SPEC.format(extra=extra).replace(
        "name: probe", f"name: {name}", 1))
    return folder


def kmodel(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kmodel", *args], capture_output=True,
                          text=True, env=env, timeout=600)


def no_gpu_env(**extra: str) -> dict[str, str]:
    """kmodel's environment here, with no GPU visible whatever the host has."""
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", **extra}


# --- the spec and the composition ----------------------------------------------------


def _spec(tmp_path: Path, extra: str) -> Path:
    folder = tmp_path / "probe"
    folder.mkdir()
    (folder / "model.py").write_text(PROBE)
    (folder / "model.yaml").write_text(PROBE_SPEC.format(extra=extra))
    return folder / "model.yaml"


def test_spec_takes_resources_and_device(tmp_path: Path) -> None:
    spec = load_model_spec(_spec(tmp_path, "resources: {threads: 4, mem_mb: 2000, gpus: 1}\n"
                                           "device: auto\n"))
    assert spec.resources is not None
    assert (spec.resources.threads, spec.resources.mem_mb, spec.resources.gpus) == (4, 2000, 1)
    assert spec.device == "auto"


@pytest.mark.parametrize(("extra", "field", "words"), [
    ("resources: {threads: 0}\n", "resources.threads", "greater than or equal to 1"),
    ("resources: {gpus: -1}\n", "resources.gpus", "greater than or equal to 0"),
    ("resources: {mem_mb: lots}\n", "resources.mem_mb", "integer"),
    ("resources: {cpus: 2}\n", "resources.cpus", "unknown key"),
    ("device: gpu\n", "device", "'cpu', 'cuda' or 'auto'"),
])
def test_bad_resources_are_one_line_naming_file_and_field(tmp_path: Path, extra: str,
                                                          field: str, words: str) -> None:
    path = _spec(tmp_path, extra)
    with pytest.raises(SpecError) as err:
        load_model_spec(path)
    text = str(err.value)
    assert "\n" not in text and str(path) in text and f"{field}:" in text and words in text


COMPOSITION = """\
name: c
data: {{builtin: breast_cancer}}
models: [logreg, gnb]
ensembler: stacker
{extra}"""


def test_composition_overrides_resources_per_model(project: Path) -> None:
    from kmodel.plan import Plan
    from kmodel.registry import Registry

    add_probe(project, "resources: {threads: 3, gpus: 0}\n")
    (project / "c.yaml").write_text(COMPOSITION.format(extra=(
        "resources:\n  logreg: {threads: 2, mem_mb: 4000}\n  stacker: {gpus: 1}\n")))
    plan = Plan(load_compose_config(project / "c.yaml"))
    reg = Registry([project / "model_specs"])
    got = plan.resources(reg, "logreg")
    assert (got.threads, got.mem_mb, got.gpus) == (2, 4000, 0)
    assert plan.resources(reg, "stacker").gpus == 1
    assert plan.resources(reg, "gnb").threads == 1  # nothing given: one thread
    # the spec's own values stay where the composition gives none
    assert Plan(load_compose_config(project / "c.yaml")).resources(reg, "probe").threads == 3


def test_composition_override_of_an_unknown_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(COMPOSITION.format(extra="resources:\n  nope: {threads: 2}\n"))
    with pytest.raises(SpecError) as err:
        load_compose_config(path)
    text = str(err.value)
    assert "\n" not in text and "resources" in text and "'nope'" in text


# --- placement -----------------------------------------------------------------------


def test_gpus_visible_follow_cuda_visible_devices() -> None:
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == 0
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == 0


def test_placement_rules() -> None:
    none = {"CUDA_VISIBLE_DEVICES": ""}
    spec = Path("model.yaml")
    assert place("m", spec, threads=2, gpus=0, spec_device=None, environ=none) == \
        Placement(2, "cpu")
    assert place("m", spec, threads=None, gpus=1, spec_device="auto", environ=none) == \
        Placement(None, "cpu")
    assert place("m", spec, threads=None, gpus=1, spec_device=None, device="cpu",
                 environ=none).device == "cpu"  # --device cpu wins over the spec's GPU
    with pytest.raises(DeviceUnavailableError, match=r"resources.gpus: 1 in model.yaml"):
        place("m", spec, threads=None, gpus=1, spec_device=None, environ=none)
    with pytest.raises(DeviceUnavailableError, match=r"--device cuda:1"):
        place("m", spec, threads=None, gpus=0, spec_device=None, device="cuda:1",
              environ=none)
    with pytest.raises(UsageError):
        place("m", spec, threads=None, gpus=0, spec_device=None, device="tpu", environ=none)
    env = Placement(3).environ({"PATH": "/bin", "OMP_NUM_THREADS": "9"})
    assert all(env[v] == "3" for v in THREAD_VARS) and env["PATH"] == "/bin"
    assert Placement().environ({"OMP_NUM_THREADS": "9"}) == {"OMP_NUM_THREADS": "9"}


# --- real runs -----------------------------------------------------------------------


def _read(path: Path) -> dict[str, np.ndarray]:
    preds, _ = hdf5.read_group(path, "preds")
    return preds


def test_threads_reach_the_runner_and_provenance(project: Path) -> None:
    """--threads sets the BLAS/OpenMP variables of the model's process (before numpy is
    imported), the spec's resources.threads is the default, and the prediction file records
    threads and device."""
    add_probe(project, "resources: {threads: 3}\n")
    make_input(project / "in.h5", rows=20)
    env = no_gpu_env(OMP_NUM_THREADS="7", OPENBLAS_NUM_THREADS="7")
    res = kmodel("predict", "probe", "-i", "in.h5", "-o", "spec.h5", env=env)
    assert res.returncode == 0, res.stderr
    got = _read(project / "spec.h5")
    assert set(got["omp"]) == {3} and set(got["openblas"]) == {3} and set(got["cuda"]) == {0}
    attrs = hdf5.read_attrs(project / "spec.h5")
    assert attrs["threads"] == 3 and attrs["device"] == "cpu"

    for n in (1, 2):
        res = kmodel("predict", "probe", "-i", "in.h5", "-o", f"t{n}.h5", "--threads", str(n),
                     "--device", "cpu", env=env)
        assert res.returncode == 0, res.stderr
        assert set(_read(project / f"t{n}.h5")["omp"]) == {n}
        assert hdf5.read_attrs(project / f"t{n}.h5")["threads"] == n
    # the threads the model's process runs (its BLAS pool), where /proc tells
    one, two = (int(_read(project / f"t{n}.h5")["tasks"][0]) for n in (1, 2))
    if one > 0:
        assert two > one, (one, two)


def test_model_without_threads_keeps_the_environment(project: Path) -> None:
    add_probe(project)
    make_input(project / "in.h5", rows=5)
    res = kmodel("predict", "probe", "-i", "in.h5", "-o", "o.h5",
                 env=no_gpu_env(OMP_NUM_THREADS="5"))
    assert res.returncode == 0, res.stderr
    assert set(_read(project / "o.h5")["omp"]) == {5}
    assert hdf5.read_attrs(project / "o.h5")["threads"] == 0


def test_build_gets_device_only_if_it_takes_it(project: Path) -> None:
    plain = PROBE.replace('def build(device="unset", torch_threads=0):',
                          "def build():").replace("Probe(device, torch_threads)",
                                                  'Probe("none given", 0)')
    add_probe(project, name="plain", code=plain)
    add_probe(project, name="kw", code=PROBE.replace(
        'def build(device="unset", torch_threads=0):', "def build(**kwargs):").replace(
        "Probe(device, torch_threads)", 'Probe(kwargs["device"], 0)'))
    make_input(project / "in.h5", rows=5)
    for name in ("plain", "kw"):
        log = project / f"{name}.log"
        res = kmodel("predict", name, "-i", "in.h5", "-o", f"{name}.h5", "--log", str(log),
                     env=no_gpu_env())
        assert res.returncode == 0, res.stderr
    assert "on none given" in (project / "plain.log").read_text()
    assert "on cpu" in (project / "kw.log").read_text()


def test_gpu_model_without_a_gpu_fails_at_once(project: Path) -> None:
    """A `gpus: 1` model where no GPU is visible: one line, KM510, before the env starts
    (its env is not even built here: a runner started in it would say so instead)."""
    add_probe(project, "resources: {gpus: 1}\n")
    make_input(project / "in.h5", rows=5)
    env = no_gpu_env(KMODEL_HOME=str(project / "empty-home"))  # no env built there
    res = kmodel("predict", "probe", "-i", "in.h5", "-o", "o.h5", env=env)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error [KM510]"), res.stderr
    assert "resources.gpus: 1" in lines[0] and "device: auto" in lines[0]
    assert not (project / "o.h5").exists() and not (project / "empty-home" / "envs").exists()
    res = kmodel("predict", "probe", "-i", "in.h5", "-o", "o.h5", "--device", "cuda:0",
                 env=env)
    assert res.returncode == 1 and "Error [KM510]" in res.stderr and "--device cuda:0" in \
        res.stderr


def test_auto_device_runs_on_the_cpu_without_a_gpu(project: Path) -> None:
    add_probe(project, "resources: {gpus: 1}\ndevice: auto\n")
    make_input(project / "in.h5", rows=5)
    res = kmodel("predict", "probe", "-i", "in.h5", "-o", "o.h5", env=no_gpu_env())
    assert res.returncode == 0, res.stderr
    assert set(_read(project / "o.h5")["cuda"]) == {0}
    assert hdf5.read_attrs(project / "o.h5")["device"] == "cpu"


@pytest.mark.skipif(visible_gpus() == 0, reason="no GPU here: the GPU path cannot run")
def test_gpu_path(project: Path) -> None:  # pragma: no cover - needs a GPU
    add_probe(project, "resources: {gpus: 1}\n")
    make_input(project / "in.h5", rows=5)
    res = kmodel("predict", "probe", "-i", "in.h5", "-o", "o.h5")
    assert res.returncode == 0, res.stderr
    assert set(_read(project / "o.h5")["cuda"]) == {1}
    assert hdf5.read_attrs(project / "o.h5")["device"] == "cuda"


def test_model_output_goes_to_the_log_and_with_v_to_stderr(project: Path) -> None:
    add_probe(project)
    make_input(project / "in.h5", rows=5)
    (project / "o.log").write_text("an older run's log\n")
    res = kmodel("predict", "probe", "-i", "in.h5", "-o", "o.h5", "--log", "o.log",
                 env=no_gpu_env())
    assert res.returncode == 0, res.stderr
    text = (project / "o.log").read_text()
    assert "probe stdout: 5 rows" in text and "probe stderr: on cpu" in text
    assert "older run" not in text  # the log starts empty
    assert "probe stdout" not in res.stderr + res.stdout  # without -v: only in the log
    res = kmodel("-v", "predict", "probe", "-i", "in.h5", "-o", "v.h5", env=no_gpu_env())
    assert res.returncode == 0, res.stderr
    assert "probe stdout: 5 rows" in res.stderr and "probe stderr: on cpu" in res.stderr


@pytest.mark.parametrize("log", ["in.h5", "o.h5", "o.h5.partial", "model_specs/probe/model.yaml",
                                 "model_specs/probe/weights/new.log", "envs/numpy2.lock",
                                 "w/fit.log"])
def test_a_log_never_empties_what_the_command_reads_or_writes(project: Path, log: str) -> None:
    """--log FILE starts FILE empty: an input, an output (or its .partial), a model's own
    files, an env's lock, or a place inside an output folder is refused before anything is
    touched."""
    add_probe(project)
    make_input(project / "in.h5", rows=5, targets=np.arange(5, dtype=np.float32))
    (project / "o.h5.partial").write_bytes(b"rows of an interrupted run")
    before = {p: p.read_bytes() for p in project.rglob("*") if p.is_file()}
    cmd = ("train", "probe", "-i", "in.h5", "-o", "w") if log.startswith("w/") else \
        ("predict", "probe", "-i", "in.h5", "-o", "o.h5")
    res = kmodel(*cmd, "--log", log, env=no_gpu_env())
    assert res.returncode == 1
    assert res.stderr.startswith("Error [KM402]: ") and "give the log a file of its own" in \
        res.stderr, res.stderr
    assert {p: p.read_bytes() for p in project.rglob("*") if p.is_file()} == before
    assert not (project / "w").exists()


def test_the_api_refuses_the_same_logs(project: Path) -> None:
    import kmodel as api
    from kmodel.errors import OutputNotWritableError

    add_probe(project)
    make_input(project / "in.h5", rows=5, targets=np.arange(5, dtype=np.float32))
    before = (project / "in.h5").read_bytes()
    handle = api.get_model("probe")
    with pytest.raises(OutputNotWritableError, match="give the log a file of its own"):
        handle.predict_file("in.h5", "o.h5", log="in.h5")
    with pytest.raises(OutputNotWritableError, match="lies inside"):
        handle.train("in.h5", "w", log="w/fit.log")
    assert (project / "in.h5").read_bytes() == before and not (project / "o.h5").exists()


def test_train_takes_threads_and_log(project: Path) -> None:
    add_probe(project)
    make_input(project / "t.h5", rows=12, targets=np.arange(12, dtype=np.float32))
    res = kmodel("train", "probe", "-i", "t.h5", "-o", "w", "--threads", "2", "--log",
                 "fit.log", env=no_gpu_env())
    assert res.returncode == 0, res.stderr
    assert list(np.load(project / "w" / "seen.npy")) == [12, 2]
    assert "probe fit stdout" in (project / "fit.log").read_text()
    from kmodel.provenance import read_folder_record

    kept = read_folder_record(project / "w")
    assert kept is not None and (kept.threads, kept.device) == (2, "cpu")


def test_info_shows_resources(project: Path) -> None:
    add_probe(project, "resources: {threads: 2, gpus: 1}\ndevice: auto\n")
    res = kmodel("info", "probe")
    assert res.returncode == 0, res.stderr
    assert 'resources   {"threads": 2, "gpus": 1}  device auto' in res.stdout


def test_job_options_default() -> None:
    assert JobOptions() == JobOptions(None, None, None, False)


# --- under kmodel run (Snakemake) ------------------------------------------------------

CHATTY = """\
import os
import sys

import numpy as np


class Chatty:
    '''A least-squares scorer squashed into (0, 1), which says what it does on stdout and
    stderr, and records the OMP_NUM_THREADS of its process in its predictions.'''

    def __init__(self):
        self.w = None

    def fit(self, x, y):
        print("chatty fit on %d rows" % len(x), flush=True)
        print("chatty fit threads %s" % os.environ.get("OMP_NUM_THREADS"), file=sys.stderr,
              flush=True)
        mu, sd = x.mean(0), x.std(0) + 1e-6
        coef = np.linalg.lstsq((x - mu) / sd, y - 0.5, rcond=None)[0]
        self.w = {"mu": mu, "sd": sd, "coef": coef}
        return self

    def predict(self, x):
        print("chatty predict %d rows" % len(x), flush=True)
        print("chatty stderr", file=sys.stderr, flush=True)
        z = ((x - self.w["mu"]) / self.w["sd"]) @ self.w["coef"]
        p = np.clip(0.5 + z, 0.02, 0.98)
        return {"proba": p, "omp": np.full(len(x), int(os.environ["OMP_NUM_THREADS"]))}

    def get_weights(self):
        return self.w

    def set_weights(self, w):
        self.w = w


def build():
    return Chatty()
"""

CHATTY_SPEC = """\
name: chatty
version: 0.1.0
env: numpy2
entrypoint: model.py:build
inputs:
  - {name: x, dtype: float32, shape: [30]}
outputs:
  - {name: proba, dtype: float32, shape: []}
  - {name: omp, dtype: int32, shape: []}
train:
  args: {}
resources: {threads: 1, mem_mb: 500}
"""

RUN_COMPOSITION = """\
name: r
results: out
data: {builtin: breast_cancer}
models: [mlp, chatty]
ensembler: stacker
outputs: {chatty: proba}
stacking: {folds: 2}
batch_size: 64
resources:
  chatty: {threads: 2}
"""


def add_chatty(project: Path) -> None:
    folder = project / "model_specs" / "chatty"
    folder.mkdir()
    (folder / "model.py").write_text(CHATTY)
    (folder / "model.yaml").write_text(CHATTY_SPEC)


@pytest.mark.slow
def test_kmodel_run_gives_each_model_its_threads_and_a_log(project: Path) -> None:
    """The composition's `threads: 2` for chatty (over its spec's 1) becomes its rules'
    threads: Snakemake runs kmodel with --threads 2, whose runner has OMP_NUM_THREADS=2
    (Snakemake itself sets 1 for a one-thread job); the model's own output lands in its
    job's model log; the prediction files record the threads."""
    add_chatty(project)
    (project / "c.yaml").write_text(RUN_COMPOSITION)
    res = kmodel("run", "c.yaml", "--cores", "2", env=no_gpu_env())
    assert res.returncode == 0, res.stderr[-3000:]
    root = project / "out" / "r"
    test = root / "preds" / "chatty" / "test.h5"
    assert set(_read(test)["omp"]) == {2}
    assert hdf5.read_attrs(test)["threads"] == 2
    assert hdf5.read_attrs(root / "preds" / "mlp" / "test.h5")["threads"] == 1
    assert hdf5.read_attrs(root / "ensemble" / "test.h5")["threads"] == 1
    logs = root / "logs" / "models"
    fit = (logs / "fit_chatty_fold0.log").read_text()
    assert "chatty fit on" in fit and "chatty fit threads 2" in fit
    pred = (logs / "predict_chatty_test.log").read_text()
    assert "chatty predict" in pred and "chatty stderr" in pred
    assert (logs / "compose_train.log").exists() and (logs / "predict_mlp_test.log").exists()
    # kmodel's own log of the job stays apart from the model's
    assert "chatty predict" not in (root / "logs" / "predict_chatty_test.log").read_text()


@pytest.mark.slow
def test_slurm_profile_asks_for_the_models_resources(project: Path) -> None:
    """The shipped profile turns a model's resources into the sbatch call: threads into
    --cpus-per-task (the profile no longer forces 1), mem_mb into --mem, gpus into
    --gres=gpu:G. Read from the SLURM plugin's own sbatch command line (its --verbose
    output, or the error it reports when sbatch refuses the job: there is no GPU in the
    test cluster); whether SLURM honours it is tests/test_slurm.py's part."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    add_chatty(project)
    (project / "c.yaml").write_text(RUN_COMPOSITION.replace(
        "chatty: {threads: 2}", "chatty: {threads: 2, mem_mb: 3000, gpus: 1}"))
    target = "out/r/weights/chatty/fold-0"
    prof = subprocess.run([sys.executable, "-m", "kmodel", "snakefile", "--profiles"],
                          capture_output=True, text=True, check=True).stdout.strip()
    res = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", subprocess.run(
            [sys.executable, "-m", "kmodel", "snakefile"], capture_output=True, text=True,
            check=True).stdout.strip(), "--configfile", "c.yaml", "--profile",
         f"{prof}/slurm", "--verbose", "--jobs", "1", "--latency-wait", "0", target],
        capture_output=True, text=True, timeout=600, env=no_gpu_env())
    text = res.stdout + res.stderr
    calls = [ln for ln in text.splitlines() if "sbatch" in ln and "--wrap" in ln]
    assert calls, text[-3000:]
    call = calls[0]
    assert "--cpus-per-task=2" in call and "--mem 3000" in call, call
    assert "--gres=gpu:1" in call, call


TORCH_PROBE = """\
import numpy as np
import torch


class Probe:
    def __init__(self, device):
        self.device = device

    def predict(self, x):
        y = torch.from_numpy(x).to(self.device).sum(1).cpu().numpy()
        return {"y": y, "torch_threads": np.full(len(x), torch.get_num_threads())}


def build(device="unset"):
    return Probe(device)
"""

TORCH_SPEC = """\
name: tprobe
version: 0.1.0
env: torch-cpu
entrypoint: model.py:build
inputs:
  - {name: x, dtype: float32, shape: [3]}
outputs:
  - {name: y, dtype: float32, shape: []}
  - {name: torch_threads, dtype: int32, shape: []}
resources: {threads: 2}
"""


@pytest.mark.slow
@pytest.mark.skipif(not (Path(__file__).parents[1] / "envs" / "torch-cpu.yaml").exists(),
                    reason="no torch env spec (envs/torch-cpu.yaml) in this checkout")
def test_torch_gets_the_jobs_threads(project: Path) -> None:
    """torch's intra-op threads follow the spec's resources.threads and --threads."""
    for suffix in ("yaml", "lock"):  # (the project leaves the framework envs out)
        shutil.copy(REPO / "envs" / f"torch-cpu.{suffix}", project / "envs")
    folder = project / "model_specs" / "tprobe"
    folder.mkdir()
    (folder / "model.py").write_text(TORCH_PROBE)
    (folder / "model.yaml").write_text(TORCH_SPEC)
    make_input(project / "in.h5", rows=4)
    for args, want in (((), 2), (("--threads", "1"), 1), (("--threads", "3"), 3)):
        res = kmodel("predict", "tprobe", "-i", "in.h5", "-o", "o.h5", *args,
                     env=no_gpu_env(OMP_NUM_THREADS="7"))
        assert res.returncode == 0, res.stderr
        assert set(_read(project / "o.h5")["torch_threads"]) == {want}, args
        assert hdf5.read_attrs(project / "o.h5")["device"] == "cpu"
