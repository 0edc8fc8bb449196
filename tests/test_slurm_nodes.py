"""kmodel on the two-node SLURM cluster of tests/slurm/up.sh: slurmd kn1 and kn2, each in a
network and a UTS namespace of its own (its own address and hostname), one shared filesystem.

What two hosts change, tested with real jobs: envs are built once on the submitting host and
only used by jobs on both nodes; a lock names its holder's host, so a process on kn2 sees an
output or env lock held from kn1 as held (it cannot probe a pid on another host), and takes
it over only when its lease has run out; a prediction killed on one node is redone on the
other; a model's `resources: {threads: 2}` job gets two CPUs. Every moment a test waits for
is a file a job writes (a barrier), never a sleep.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest

from kmodel.io import hdf5
from kmodel.registry import Registry

from .conftest import make_project, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.slurm]
REPO = Path(__file__).resolve().parents[1]
KMODEL = [sys.executable, "-m", "kmodel"]
NODES = ("kn1", "kn2")

#: a model that records where it runs (hostname, pid, SLURM job) and can park mid-prediction
#: until the test lets it go: ``park`` rows in, it writes TRACE/parked-HOST-PID and waits for
#: TRACE/go, once per trace folder (a rerun finds the parked file and does not stop)
PROBE_MODEL = """\
import glob
import os
import socket
import time


class Probe:
    def __init__(self, trace, park):
        self.trace, self.park, self.w, self.rows = trace, park, None, 0
        self.me = "%s-%d" % (socket.gethostname(), os.getpid())
        with open(os.path.join(trace, "built-" + self.me), "w") as f:
            f.write(os.environ.get("SLURM_JOB_ID", ""))

    def predict(self, x):
        self.rows += len(x)
        if self.park is not None and self.rows >= self.park \\
                and not glob.glob(os.path.join(self.trace, "parked-*")):
            open(os.path.join(self.trace, "parked-" + self.me), "w").close()
            while not os.path.exists(os.path.join(self.trace, "go")):
                time.sleep(0.01)
        return (x @ self.w["probe-w"]).astype("float32")

    def get_weights(self):
        return self.w

    def set_weights(self, w):
        self.w = w


def build(trace, park=None):
    return Probe(trace, park)
"""

PROBE_SPEC = """\
name: {name}
version: 0.1.0
description: x @ w, recording the host it runs on
env: {env}
entrypoint: model.py:build
args:
  trace: {trace}
  park: {park}
inputs:
  - name: x
    dtype: float32
    shape: [30]
outputs:
  - name: proba
    dtype: float32
    shape: []
{extra}"""

COMPOSITION = """\
name: {name}
results: out-{name}
data:
  builtin: breast_cancer
models: [{models}]
ensembler: stacker
stacking: {{method: in-sample}}
batch_size: 32
"""

W = np.linspace(-1.0, 1.0, 30)


@pytest.fixture(scope="module")
def nodes() -> None:
    """The two-node cluster (started if sinfo does not answer), or a skip saying why."""
    if not shutil.which("sbatch") or subprocess.run(
            ["sinfo", "-h"], capture_output=True, timeout=10).returncode != 0:
        res = subprocess.run(["bash", str(REPO / "tests" / "slurm" / "up.sh")],
                             capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            pytest.skip((res.stderr.strip().splitlines() or ["SLURM could not be started"])[-1])
    found = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True,
                           timeout=10).stdout.split()
    if sorted(set(found)) != list(NODES):
        pytest.skip(f"the SLURM cluster up has nodes {found}, not kn1 and kn2: "
                    "run tests/slurm/up.sh (it restarts it as two nodes)")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, nodes: None) -> Iterator[Path]:
    """A project (the repo's envs and specs) and a fresh KMODEL_HOME beside it, shared by
    this module's tests: the envs of the first test's run are the ones the others use."""
    root = tmp_path_factory.mktemp("nodes")
    make_project(root / "project")
    old = os.environ.get("KMODEL_HOME")
    os.environ["KMODEL_HOME"] = str(root / "home")
    yield root / "project"
    if old is None:
        os.environ.pop("KMODEL_HOME", None)
    else:
        os.environ["KMODEL_HOME"] = old


def probe(project: Path, name: str, park: int | None = None, env: str = "numpy2",
          extra: str = "") -> Path:
    """A probe model NAME in the project; returns its (empty) trace folder."""
    trace = project / "trace" / name
    trace.mkdir(parents=True)
    folder = project / "model_specs" / name
    (folder / "weights").mkdir(parents=True)
    (folder / "model.py").write_text(PROBE_MODEL)
    (folder / "model.yaml").write_text(PROBE_SPEC.format(
        name=name, env=env, trace=json.dumps(str(trace)),
        park="null" if park is None else park, extra=extra))
    np.save(folder / "weights" / "probe-w.npy", W)
    (folder / "weights" / "params.json").write_text('{"weights": ["probe-w"]}\n')
    from kmodel.weights import write_hashes

    write_hashes(Registry([project / "model_specs"]).model(name))
    return trace


def runs(trace: Path, kind: str) -> list[tuple[str, int]]:
    """(host, pid) of each file ``KIND-HOST-PID`` in a trace folder."""
    return sorted((host, int(pid)) for host, pid in
                  (p.name.split("-", 1)[1].rsplit("-", 1) for p in trace.glob(f"{kind}-*")))


def job_of(trace: Path, host: str, pid: int) -> str:
    """The SLURM job id the probe built as (host, pid) ran in."""
    return (trace / f"built-{host}-{pid}").read_text()


def job_field(job: str, field: str) -> str:
    text = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True,
                          timeout=30).stdout
    found = re.search(rf"\b{field}=(\S+)", text)
    assert found, (field, text)
    return found.group(1)


def gone(pid: int) -> bool:
    """The process has exited (a zombie no one reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rfind(")") + 2] == "Z"


def submitted(log: str) -> list[str]:
    return [ln for ln in log.splitlines() if "has been submitted with SLURM jobid" in ln]


def kmodel_run(project: Path, config: str, *args: str) -> subprocess.Popen[str]:
    """`kmodel run CONFIG --profile slurm --until predict ARGS` (the models' predictions
    only), started."""
    return subprocess.Popen([*KMODEL, "run", config, "--profile", "slurm", "--until", "predict",
                             *args], cwd=project, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    _, err = proc.communicate(timeout=600)
    return proc.returncode, err


def assert_products(preds: np.ndarray, x: np.ndarray) -> None:
    """``preds`` are x @ w, up to float32 rounding (relative to the sum of |x_i w_i|)."""
    x = x.astype(np.float64)
    assert preds.shape == (len(x),)
    assert np.all(np.abs(preds - x @ W) <= 1e-5 * (np.abs(x) @ np.abs(W)) + 1e-6)


def data_x(project: Path, config: str, split: str) -> np.ndarray:
    with h5py.File(project / f"out-{config}" / config / "data" / f"{split}.h5", "r") as f:
        return f["inputs/x"][()]


def preds_of(project: Path, config: str, model: str) -> dict[str, Path]:
    """A model's prediction files in a composition's results, by split."""
    folder = project / f"out-{config}" / config / "preds" / model
    return {p.stem: p for p in folder.glob("*.h5")}


def assert_correct(project: Path, config: str, model: str) -> None:
    """The model's predictions of both splits (in-sample: train, and test) are x @ w."""
    outs = preds_of(project, config, model)
    assert sorted(outs) == ["test", "train"], outs
    for split, out in outs.items():
        with h5py.File(out, "r") as f:
            assert_products(f["preds/proba"][()], data_x(project, config, split))


def test_jobs_on_both_nodes_use_the_envs_built_once_on_the_submitting_host(site: Path) -> None:
    """Three predict jobs parked at once on four CPUs of two nodes of 2 CPUs each: they
    must span both nodes. Each records the hostname it sees, which is the node SLURM says
    it ran on. The env was built by the workflow's env rule on the submitting host (a local
    job), once, into the shared KMODEL_HOME; no job built one."""
    traces = [probe(site, f"p{i}", park=64) for i in (1, 2, 3)]
    (site / "spread.yaml").write_text(COMPOSITION.format(name="spread", models="p1, p2, p3"))
    proc = kmodel_run(site, "spread.yaml")
    wait_for(lambda: all(runs(t, "parked") for t in traces) or proc.poll() is not None, 300)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    parked = {t.name: runs(t, "parked")[0] for t in traces}
    for t in traces:
        (t / "go").touch()
    rc, log = finish(proc)
    assert rc == 0, log[-3000:]

    hosts = {name: host for name, (host, _) in parked.items()}
    assert set(hosts.values()) == set(NODES), hosts  # all three at once: both nodes
    for t in traces:
        (built,) = runs(t, "built")  # one runner per job, one model build
        assert built == parked[t.name]
        assert job_field(job_of(t, *built), "NodeList") == built[0]  # hostname = SLURM's node
    jobs = submitted(log)
    assert len(jobs) == 3 and all("rule_predict" in ln for ln in jobs), jobs
    assert not any("rule_env" in ln for ln in jobs)  # the env rule is never a cluster job

    logs = site / "out-spread" / "spread" / "logs"
    built_envs = [p.name for p in logs.glob("env_*.log") if "creating env" in p.read_text()]
    assert built_envs == ["env_numpy2.log"]
    assert len(list(logs.glob("predict_*.log"))) == 3
    for job in logs.glob("predict_*.log"):
        assert "creating env" not in job.read_text(), job
    home = Path(os.environ["KMODEL_HOME"])
    assert [p.name.rsplit("-", 1)[0] for p in (home / "envs").iterdir() if p.is_symlink()] \
        == ["numpy2"]
    for name in ("p1", "p2", "p3"):
        assert_correct(site, "spread", name)


def test_a_prediction_killed_on_one_node_is_redone_on_the_other(site: Path) -> None:
    """The job on kn1 is cancelled (scancel) while its model is half-way; the workflow
    fails and leaves no output. Rerun with kn1 excluded, the job runs on kn2 and writes the
    whole prediction: equal to x @ w, and `kmodel verify` finds its provenance sound."""
    trace = probe(site, "pk", park=64)
    (site / "kill.yaml").write_text(COMPOSITION.format(name="kill", models="pk"))
    pin = "predict:slurm_extra='--nodelist={}'"
    proc = kmodel_run(site, "kill.yaml", "--set-resources", pin.format("kn1"))
    wait_for(lambda: runs(trace, "parked") or proc.poll() is not None, 300)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    ((host, pid),) = runs(trace, "parked")
    assert host == "kn1"
    job = job_of(trace, host, pid)
    subprocess.run(["scancel", job], check=True, timeout=30)
    rc, log = finish(proc)
    wait_for(lambda: gone(pid))  # SLURM stopped its model's runner (the nodes share pids)
    assert rc != 0 and f"jobid {job}" in log, log[-3000:]
    assert preds_of(site, "kill", "pk") == {}  # nothing half-written left as an output

    rc, log = finish(kmodel_run(site, "kill.yaml", "--set-resources", pin.format("kn2")))
    assert rc == 0, log[-3000:]
    hosts = [h for h, _ in runs(trace, "built")]
    assert sorted(hosts) == ["kn1", "kn2"]
    (again,) = [b for b in runs(trace, "built") if b[0] == "kn2"]
    assert job_field(job_of(trace, *again), "NodeList") == "kn2"
    assert_correct(site, "kill", "pk")
    for out in preds_of(site, "kill", "pk").values():
        res = subprocess.run([*KMODEL, "verify", str(out)], cwd=site, capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr


def built_here(project: Path) -> None:
    """The probes' env, built on the submitting host (the nodes have no internet)."""
    subprocess.run([*KMODEL, "env", "create", "numpy2"], cwd=project, check=True,
                   capture_output=True, timeout=600)


def on(node: str, *cmd: str, **env: str) -> list[str]:
    """A command line running CMD as a one-task job on NODE (srun), with extra env vars."""
    exports = ",".join(["ALL", *(f"{k}={v}" for k, v in env.items())])
    return ["srun", "-w", node, "-N1", "-n1", f"--export={exports}", *cmd]


def test_an_output_lock_held_from_kn1_holds_on_kn2_until_its_lease_runs_out(
        site: Path) -> None:
    """`kmodel predict` on kn1 holds OUT.lock (its marker names host kn1) while its model
    is parked. The same command on kn2 is refused, naming the holder on kn1. kn1's kmodel is
    then killed (SIGKILL, as if its node were lost: no release, no more heartbeats): kn2
    still cannot take the lock at once, since a pid on another host proves nothing. When the
    lease has run out (the marker's heartbeat older than KMODEL_LOCK_LEASE: aged here, as no
    process touches it any more), kn2 takes it over and writes the whole prediction."""
    built_here(site)
    trace = probe(site, "pl", park=64)
    x = np.random.default_rng(0).normal(size=(300, 30)).astype(np.float32)
    hdf5.write_table(site / "in.h5", {"inputs": {"x": x}}, [f"r{i}" for i in range(300)])
    out, lock = site / "locked.h5", site / "locked.h5.lock"
    predict = ("python", "-m", "kmodel", "predict", "pl", "-i", "in.h5", "-o", out.name)
    holder = subprocess.Popen(on("kn1", *predict), cwd=site, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    wait_for(lambda: runs(trace, "parked") or holder.poll() is not None, 300)
    assert holder.poll() is None, holder.communicate()[1][-3000:]
    marker = dict(ln.split("=", 1) for ln in lock.read_text().splitlines() if "=" in ln)
    assert marker["host"] == "kn1"

    def from_kn2() -> subprocess.CompletedProcess[str]:
        return subprocess.run(on("kn2", *predict), cwd=site, capture_output=True, text=True,
                              timeout=300)

    refused = from_kn2()
    assert refused.returncode != 0 and "Error [KM402]" in refused.stderr
    assert f"another kmodel run (pid {marker['pid']} on kn1) is writing it" in refused.stderr

    ((_, runner),) = runs(trace, "parked")
    for victim in (int(marker["pid"]), runner):  # kmodel and its runner, as with kn1 lost
        os.kill(victim, signal.SIGKILL)
    holder.communicate(timeout=120)
    wait_for(lambda: gone(int(marker["pid"])) and gone(runner))
    assert lock.exists()  # killed: nothing released it
    refused = from_kn2()  # its heartbeat is seconds old: the lease (120 s) holds
    assert refused.returncode != 0 and f"pid {marker['pid']} on kn1" in refused.stderr

    old = time.time() - 121  # the lease's 120 s without a heartbeat
    os.utime(lock, (old, old))
    taken = from_kn2()
    assert taken.returncode == 0, taken.stderr
    with h5py.File(out, "r") as f:
        assert_products(f["preds/proba"][()], x)
    assert [h for h, _ in runs(trace, "built")] == ["kn1", "kn2"]
    assert not lock.exists()  # released by its new holder


HOLD_ENV_LOCK = """\
import os, sys, time
from pathlib import Path
from kmodel import _lock
from kmodel.envs import backend_for
from kmodel.errors import UsageError
from kmodel.registry import Registry

(ref,) = Registry([Path("model_specs")], [Path("envs")]).env_refs([sys.argv[1]])
backend = backend_for(ref)
prefix = backend.prefix(ref, backend.key(ref))
with _lock.held(Path(f"{prefix}.lock"), lambda who: UsageError(who)):
    Path(sys.argv[2], "holding").write_text(str(os.getpid()))
    while not Path(sys.argv[2], "go").exists():
        time.sleep(0.01)
"""


def test_an_env_build_on_kn2_waits_for_the_env_lock_held_on_kn1(site: Path) -> None:
    """A process on kn1 holds an env's build lock (kmodel's own lock, at the env's path in
    the shared KMODEL_HOME). `kmodel env create` on kn2 waits, saying who holds it: a pid
    on kn1 (the nodes have no internet, so it is stopped there rather than left to build)."""
    for suffix in ("yaml", "lock"):  # the numpy2 env under a name not built yet
        shutil.copy(site / "envs" / f"numpy2.{suffix}", site / "envs" / f"nodelock.{suffix}")
    gate = site / "trace" / "envlock"
    gate.mkdir(parents=True)
    holder = subprocess.Popen(on("kn1", "python", "-c", HOLD_ENV_LOCK, "nodelock", str(gate)),
                              cwd=site, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    wait_for(lambda: (gate / "holding").exists() or holder.poll() is not None, 300)
    assert holder.poll() is None, holder.communicate()[1][-3000:]
    pid = (gate / "holding").read_text()
    waiter = subprocess.Popen(on("kn2", "python", "-m", "kmodel", "-v", "env", "create",
                                 "nodelock"), cwd=site, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    assert waiter.stdout is not None
    said = []
    for line in waiter.stdout:  # it waits, saying for whom
        said.append(line)
        if "which is building env nodelock" in line:
            break
    waiter.kill()  # srun: its job step ends with it
    waiter.communicate(timeout=120)
    assert f"waiting for pid {pid} on kn1, which is building env nodelock" in "".join(said)
    assert not any("creating env" in line for line in said)
    (gate / "go").touch()
    holder.communicate(timeout=120)
    assert holder.returncode == 0


def test_a_threads_2_model_gets_two_cpus_of_one_node(site: Path) -> None:
    """A model with `resources: {threads: 2}`: its job asks SLURM for 2 CPUs
    (cpus-per-task through the profile) and, parked mid-prediction, holds NumCPUs=2 on its
    node, a whole node of this cluster; its predictions record 2 threads."""
    from kmodel.errors import SpecError

    try:
        trace = probe(site, "pt", park=64, extra="resources: {threads: 2}\n")
    except SpecError as e:
        if "resources: unknown key" not in str(e):
            raise
        pytest.skip("this kmodel has no per-model resources yet (branch `resources`)")
    (site / "threads.yaml").write_text(COMPOSITION.format(name="threads", models="pt"))
    proc = kmodel_run(site, "threads.yaml")
    wait_for(lambda: runs(trace, "parked") or proc.poll() is not None, 300)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    ((host, pid),) = runs(trace, "parked")
    job = job_of(trace, host, pid)
    try:
        assert job_field(job, "NumCPUs") == "2"
        assert job_field(job, "NodeList") == host
        node = subprocess.run(["scontrol", "show", "node", host], capture_output=True,
                              text=True, timeout=30).stdout
        assert "CPUAlloc=2 " in node and "CPUTot=2 " in node, node  # the whole node
    finally:
        (trace / "go").touch()
        rc, log = finish(proc)
    assert rc == 0, log[-3000:]
    assert_correct(site, "threads", "pt")
    for out in preds_of(site, "threads", "pt").values():
        with h5py.File(out, "r") as f:
            assert f.attrs["threads"] == 2  # the runner ran it with 2 threads
