"""The one Snakemake adapter: plans a composition's files and runs workflows/Snakefile.

Snakemake cannot deploy uv venvs or conda envs without a conda binary, so rules call the
kmodel CLI and kmodel activates each model's env itself.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from kmodel import _lock, _subprocess
from kmodel._fs import ensure_parent
from kmodel.errors import Interrupted, KmodelError, UsageError, WorkflowError, signum_of
from kmodel.plan import Plan, load_plan
from kmodel.registry import Registry

log = logging.getLogger("kmodel")

#: the workflows folder as shipped inside the package (wheel installs) or the source tree
_CANDIDATES = (Path(__file__).parent / "_workflows", Path(__file__).parents[1] / "workflows")


def workflows_dir() -> Path:
    for path in _CANDIDATES:
        if (path / "Snakefile").is_file():
            return path
    raise WorkflowError("kmodel's Snakefile is missing from the installation; reinstall kmodel")


def snakefile() -> Path:
    """The Snakefile to use as a Snakemake module (`kmodel snakefile` prints it)."""
    return workflows_dir() / "Snakefile"


def profile(name: str) -> Path | None:
    """A cluster profile shipped with kmodel (workflows/profiles/NAME), if there is one."""
    path = workflows_dir() / "profiles" / name
    return path if (path / "config.yaml").is_file() else None


_FAILED_RULE = re.compile(r"Error in rule (\S+?):")
#: a job's logs: its own, then (a model's job) the model's output
_LOG = re.compile(r"^\s*log: (\S+?)(?:, (\S+?/logs/models/\S+?))?,?(?:\s|$)")
REAPER = Path(__file__).with_name("_reaper.py")


DRY_RUN = {"-n", "--dry-run", "--dryrun"}
#: Snakemake arguments that make it print something instead of running the workflow
INFO_ONLY = {"--summary", "-S", "--detailed-summary", "-D", "--list-rules", "--list", "-l",
             "--list-target-rules", "--lt", "--dag", "--rulegraph", "--filegraph",
             "--list-changes", "--lc", "--unlock", "--cleanup-metadata", "--cm", "--lint",
             "--print-compilation", "--version", "--help", "-h"}


def asks(args: Sequence[str], flags: set[str], short: str = "") -> bool:
    """Whether Snakemake arguments hold one of ``flags``: whole, abbreviated as argparse
    allows (--dry-r; Snakemake refused it already if it was ambiguous), or ``short`` in a
    group of short options (-np)."""
    def named(arg: str) -> bool:
        name = arg.split("=", 1)[0]
        return name in flags or (len(name) > 3 and name.startswith("--")
                                 and any(f.startswith(name) for f in flags))

    return any(named(a) or (short and a.startswith("-") and not a.startswith("--")
                            and short in a[1:]) for a in args)


def to_scheduler(args: Sequence[str]) -> bool:
    """Jobs go to a cluster's scheduler: a profile or an executor was given."""
    return asks(args, {"--profile", "--executor"}, "e") or bool(
        os.environ.get("SNAKEMAKE_PROFILE"))


def prints_itself(args: Sequence[str]) -> bool:
    """Snakemake was asked to print something (--summary, --dag, ...): show all it says."""
    return asks(args, INFO_ONLY)


@dataclass(frozen=True)
class Outcome:
    """What a `kmodel run` did: ``ran`` (the workflow ran, or had nothing to do), ``dry``
    (a dry run, however it was asked for: -n, --dry-r, a profile) or ``info`` (Snakemake
    only printed what was asked, e.g. --summary)."""

    plan: Plan
    kind: Literal["ran", "dry", "info"]
    seconds: float


def run(config: Path, registry: Registry, *, cores: int | None = None,
        extra: Sequence[str] = (), echo: Callable[[str], None] | None = None) -> Outcome:
    """Run the composition's workflow with Snakemake in a subprocess; say what it did.

    Safe to rerun after the previous run was killed at any moment: one `kmodel run` per
    composition at a time (a lock kmodel holds), Snakemake's lock left by a killed run is
    removed when no Snakemake process is alive in this folder, and incomplete outputs are
    regenerated. If kmodel itself is killed, a reaper stops Snakemake and its jobs.
    """
    t0 = time.perf_counter()
    plan = load_plan(config, registry)
    extra = _with_profile(extra)
    from kmodel.status import forced, status

    if plan.root.exists() and (remake := forced(plan, status(plan, registry))):
        # stale for reasons Snakemake cannot see (a kmodel version, a weight file's bytes)
        log.info("remaking %d stale output(s): %s", len(remake), ", ".join(remake))
        extra = [*extra, "--forcerun", *remake]
    cmd = [sys.executable, "-m", "snakemake", "-s", str(snakefile()), "--configfile",
           str(config)]
    if cores is not None or not to_scheduler(extra):
        # for a scheduler's jobs --cores would cap each job's threads (its CPUs) at N
        cmd += ["--cores", str(cores or 1)]
    env = dict(os.environ)
    if registry.specs:  # the Snakefile's own Registry() must see what ours sees
        env["KMODEL_PATH"] = os.pathsep.join([*(str(p.absolute()) for p in registry.specs),
                                              env.get("KMODEL_PATH", "")])
    env["KMODEL_ENVS"] = os.pathsep.join(str(d.absolute()) for d in registry.env_path)
    lock = plan.root.parent / f".{plan.root.name}.kmodel-run.lock"
    ensure_parent(lock)
    busy = lambda who: WorkflowError(  # noqa: E731
        f"another `kmodel run` of {plan.config.name!r} ({who}) is running in this folder; "
        "wait for it to finish")
    with _lock.held(lock, busy):
        if "--unlock" not in extra:
            _clear_stale_lock(cmd, env)
        flags = [] if "--unlock" in extra else ["--rerun-incomplete"]
        if not any(a.startswith("--rerun-triggers") for a in extra):
            # content, not timestamps: what `kmodel status` calls stale is forced above, so a
            # fresh checkout (every file touched) reruns nothing that is still fresh
            flags += ["--rerun-triggers", "code", "input", "params", "software-env"]
        did: set[str] = set()

        def seen(line: str) -> None:
            if mark := marks(line):
                did.add(mark)
            if echo is not None:
                echo(line)

        _snakemake([*cmd, *flags, *extra], env, seen)
    kind: Literal["ran", "dry", "info"] = (
        "dry" if "dry" in did or asks(extra, DRY_RUN, "n") else
        "ran" if "ran" in did and not prints_itself(extra) else "info")
    return Outcome(plan, kind, time.perf_counter() - t0)


def _with_profile(extra: Sequence[str]) -> list[str]:
    """``--profile NAME`` of a profile shipped with kmodel becomes its path (Snakemake would
    look for NAME in the user's config folders only)."""
    args = list(extra)
    for i, arg in enumerate(args):
        name = args[i + 1] if arg == "--profile" and i + 1 < len(args) else (
            arg.split("=", 1)[1] if arg.startswith("--profile=") else None)
        if name and not Path(name).exists() and (shipped := profile(name)):
            args[i: i + (2 if arg == "--profile" else 1)] = ["--profile", str(shipped)]
            break
    return args


def _snakemake(cmd: list[str], env: dict[str, str], echo: Callable[[str], None] | None) -> None:
    tail: collections.deque[str] = collections.deque(maxlen=400)
    proc = _subprocess.popen(cmd, env=env, stderr=subprocess.STDOUT, die_with_parent=False)
    reaper = _subprocess.popen([sys.executable, "-I", REAPER, str(proc.pid), "60"],
                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, die_with_parent=False)
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            tail.append(line)
            if echo:
                echo(line)
        code = proc.wait()
    except KeyboardInterrupt as e:
        _subprocess.stop(proc, grace=30)  # Snakemake removes the outputs of running jobs
        raise Interrupted(signum_of(e), "Snakemake and its jobs were stopped; rerun to "
                          "continue") from None
    finally:
        with contextlib.suppress(OSError):
            assert reaper.stdin is not None
            reaper.stdin.write(b"done")
            reaper.stdin.close()
        reaper.wait()
    if code != 0:
        raise _failure(list(tail), code)


def _live_snakemakes(folder: Path) -> list[int] | None:
    """Pids of Snakemake processes working in ``folder``; None where /proc cannot tell."""
    proc = Path("/proc")
    if not (proc / "self" / "cwd").exists():
        return None
    here = os.path.realpath(folder)
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if os.readlink(entry / "cwd") != here:
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"snakemake" in arg for arg in argv[:3]):
            found.append(int(entry.name))
    return found


def _clear_stale_lock(cmd: list[str], env: dict[str, str], wait: float = 60.0) -> None:
    """Remove Snakemake's lock if a killed run left it (no Snakemake alive in this folder).

    A killed run's Snakemake may still be shutting down (its reaper stops it): wait for it.
    """
    locks = Path(".snakemake") / "locks"
    if not locks.is_dir() or not any(locks.iterdir()):
        return
    deadline = time.monotonic() + wait
    while (live := _live_snakemakes(Path.cwd())) and time.monotonic() < deadline:
        log.info("waiting for Snakemake (pid %s) to finish in this folder", live[0])
        time.sleep(1.0)
    if live is None or live:
        return  # cannot tell, or still running: Snakemake itself will say the folder is locked
    log.info("removing Snakemake's lock left by a killed run")
    _subprocess.run([*cmd, "--unlock"], env=env, error=lambda tail: WorkflowError(
        f"cannot remove Snakemake's stale lock: {tail}; run `snakemake --unlock` here"))


def _failure(lines: list[str], code: int) -> KmodelError:
    text = "\n".join(lines)
    if usage := next((ln for ln in reversed(lines) if ": error: " in ln and "usage" in text),
                     None):  # Snakemake's argument parser refused what it was given
        return UsageError(f"Snakemake: {usage.split(': error: ', 1)[1]}; see `snakemake "
                          "--help` (what follows the CONFIG of kmodel run is Snakemake's)")
    if "LockException" in text or "Directory cannot be locked" in text:
        return WorkflowError(
            "Snakemake's lock on this folder is held by another Snakemake run; wait for it "
            "to finish, or if none is running (a killed run on another machine), run the same "
            "`kmodel run CONFIG --unlock` once")
    rule, log_path, model_log = _failed_rule(lines)
    if rule is None:
        return WorkflowError(f"Snakemake failed: {_reason(lines, code)}{_full_log(lines)}")
    reason = _last_error(Path(log_path)) if log_path else ""
    where = f"; see its log {log_path}" if log_path else ""
    if model_log:
        where += f" (the model's own output: {model_log})"
    return WorkflowError(f"Snakemake failed in rule {rule!r}{where}" +
                         (f": {reason}" if reason else ""))


def _failed_rule(lines: list[str]) -> tuple[str | None, str | None, str | None]:
    """The last rule Snakemake says failed, its log file and its model's log, if it has
    one (as named after it)."""
    rule = log_path = model_log = None
    for i, line in enumerate(lines):
        if m := _FAILED_RULE.search(line):
            rule = m.group(1)
            found = next((lm for follow in lines[i + 1 : i + 30]
                          if (lm := _LOG.match(follow))), None)
            log_path = found.group(1) if found else None
            model_log = found.group(2) if found else None
    return rule, log_path, model_log


def _last_error(log: Path) -> str:
    """A job log's last ``Error ...`` line (else its last line), or "" if there is none."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    errors = [ln for ln in lines if ln.startswith("Error")]
    return (errors or lines or [""])[-1]


_EXCEPTION = re.compile(r"^(\w+(Exception|Error))( in .*)?:?\s*(.*)$")


def _reason(lines: list[str], code: int) -> str:
    """The first error Snakemake names, with the line that follows it (the detail)."""
    for i, line in enumerate(lines):
        m = _EXCEPTION.match(line.strip())
        if m and m.group(1) not in ("Error",):
            detail = m.group(4) or next((ln.strip() for ln in lines[i + 1 : i + 4]
                                         if ln.strip()), "")
            return f"{m.group(1)}: {detail}".rstrip(": ")
    last = next((ln.strip() for ln in reversed(lines) if ln.strip()), "")
    return last or f"exit code {code}"


_COMPLETE_LOG = re.compile(r"^Complete log(?:\(s\))?: (.+)$")


def _full_log(lines: list[str]) -> str:
    """Where this run's whole log is, as Snakemake said (never an older run's log)."""
    found = next((m[1].strip() for ln in reversed(lines) if (m := _COMPLETE_LOG.match(ln))),
                 None)
    return f"; full log: {found}" if found else ""


class LogSummary:
    """Snakemake's log as `kmodel run` shows it: one line per finished job with a count and
    its time, SLURM submissions, a failed job's own log (its last lines), and where the
    whole log is. ``feed`` takes each line and returns what to print (often nothing)."""

    TAIL = 15  # lines of a failed job's log to show

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.job: dict[str, Any] = {}
        self.finished: str | None = None
        self.failed = False

    def feed(self, line: str) -> list[str]:
        text = line.strip()
        for pattern, handle in self._HANDLERS:
            if m := pattern.match(text):
                return handle(self, m)
        if text.startswith(("Nothing to be done", "This was a dry-run")) \
                or "has been submitted with SLURM jobid" in text or _COMPLETE_LOG.match(text):
            return [text]
        return []

    def _rule(self, m: re.Match[str]) -> list[str]:
        self.job, self.failed = {"rule": m[1], "label": "", "start": time.monotonic()}, False
        return []

    def _error(self, m: re.Match[str]) -> list[str]:
        self.job, self.failed = {"rule": m[1], "label": ""}, True
        return []

    def _jobid(self, m: re.Match[str]) -> list[str]:
        if not self.failed:
            self.jobs[m[1]] = self.job
        elif m[1] in self.jobs:  # the failed job's wildcards, from when it started
            self.job["label"] = self.jobs[m[1]]["label"]
        return []

    def _wildcards(self, m: re.Match[str]) -> list[str]:
        self.job["label"] = " ".join(v.split("=", 1)[-1] for v in m[1].split(", "))
        return []

    def _log(self, m: re.Match[str]) -> list[str]:
        if not self.failed:
            return []
        what = f"{self.job['rule']} {self.job['label']}".strip()
        return [f"FAILED {what}", *self._tail(m[1])]

    def _finished(self, m: re.Match[str]) -> list[str]:
        self.finished = m[1]
        return []

    def _steps(self, m: re.Match[str]) -> list[str]:
        job = self.jobs.get(self.finished or "", {})
        took = time.monotonic() - job["start"] if "start" in job else None
        what = f"{job.get('rule', 'job')} {job.get('label', '')}".strip()
        return [f"[{m[1]}/{m[2]}] {what}" + (f" ({took:.1f} s)" if took else "")]

    _HANDLERS: ClassVar[list[tuple[re.Pattern[str], Callable[[Any, re.Match[str]],
                                                                list[str]]]]] = [
        (re.compile(r"^(?:local)?rule (\S+):$"), _rule),
        (re.compile(r"^Error in rule (\S+):$"), _error),
        (re.compile(r"^jobid: (\d+)$"), _jobid),
        (re.compile(r"^wildcards: (.+)$"), _wildcards),
        (re.compile(r"^log: (.+?)(?: \(check log file\(s\) for error details\))?$"), _log),
        (re.compile(r"^Finished jobid: (\d+)"), _finished),
        (re.compile(r"^(\d+) of (\d+) steps \(\d+%\) done$"), _steps),
    ]

    def _tail(self, log: str) -> list[str]:
        path = Path(log.split(",")[0].strip())
        try:
            lines = path.read_text(errors="replace").splitlines()[-self.TAIL:]
        except OSError:
            return []
        return [f"  last lines of {path}:", *(f"    {ln}" for ln in lines)]


_RAN = re.compile(r"^(Nothing to be done|\d+ of \d+ steps \(100%\) done|Complete log)")


def marks(line: str) -> str | None:
    """What a line of Snakemake's log says it did: "dry" (a dry run, however it was asked
    for: -n, an abbreviation such as --dry-r, a profile), "ran" (it ran or had nothing to
    do), or None. Neither after a whole log: it only printed what was asked (--summary)."""
    if line.startswith("This was a dry-run"):
        return "dry"
    return "ran" if _RAN.match(line) else None


def read_scores(plan: Plan) -> dict[str, dict[str, Any]] | None:
    """The composition's scores, or None if there are none (or they are not a score table)."""
    from kmodel import scores

    try:
        return scores.read(plan.scores)
    except (OSError, KmodelError):
        return None
