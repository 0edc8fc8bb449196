"""The one Snakemake adapter: plans a composition's files and runs workflows/Snakefile.

Snakemake cannot deploy uv venvs or conda envs without a conda binary, so rules call the
kmodel CLI and kmodel activates each model's env itself.
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kmodel import _subprocess
from kmodel.errors import Interrupted, WorkflowError
from kmodel.registry import Registry
from kmodel.spec import ComposeConfig, load_compose_config

#: the workflow as shipped inside the package (wheel installs) or in the source tree
_CANDIDATES = (Path(__file__).parent / "_workflows" / "Snakefile",
               Path(__file__).parents[1] / "workflows" / "Snakefile")


def snakefile() -> Path:
    for path in _CANDIDATES:
        if path.is_file():
            return path
    raise WorkflowError("kmodel's Snakefile is missing from the installation; reinstall kmodel")


@dataclass(frozen=True)
class Plan:
    """Every file of a composition, derived from its config."""

    config: ComposeConfig

    @property
    def root(self) -> Path:
        return Path(self.config.results) / self.config.name

    def data(self, split: str) -> Path:
        given = getattr(self.config.data, split)
        return Path(given) if given else self.root / "data" / f"{split}.h5"

    def env_record(self, env: str) -> Path:
        return self.root / "envs" / f"{env}.json"

    def preds(self, model: str, split: str) -> Path:
        return self.root / "preds" / model / f"{split}.h5"

    @property
    def ensembler_weights(self) -> Path:
        return self.root / "ensembler" / self.config.ensembler

    @property
    def ensemble(self) -> Path:
        return self.root / "ensemble" / "test.h5"

    @property
    def scores(self) -> Path:
        return self.root / "scores.json"

    def log(self, *parts: str) -> Path:
        return self.root / "logs" / ("_".join(parts) + ".log")

    def check(self, registry: Registry) -> None:
        """Fail early (before Snakemake starts) on unknown models or envs."""
        for name in [*self.config.models, self.config.ensembler]:
            registry.env_of(registry.model(name))


def load_plan(path: Path, registry: Registry) -> Plan:
    plan = Plan(load_compose_config(path))
    plan.check(registry)
    return plan


_FAILED_RULE = re.compile(r"Error in rule (\S+?):")
_LOG = re.compile(r"^\s*log: (\S+)")


def run(config: Path, registry: Registry, *, cores: int = 1, extra: Sequence[str] = (),
        echo: Callable[[str], None] | None = None) -> Plan:
    """Run the composition's workflow with Snakemake in a subprocess; return its plan."""
    plan = load_plan(config, registry)
    cmd = [sys.executable, "-m", "snakemake", "-s", str(snakefile()), "--configfile",
           str(config), "--cores", str(cores), *extra]
    env = dict(os.environ)
    if registry.specs:  # the Snakefile's own Registry() must see what ours sees
        env["KMODEL_PATH"] = os.pathsep.join([*(str(p.absolute()) for p in registry.specs),
                                              env.get("KMODEL_PATH", "")])
    env["KMODEL_ENVS"] = str(registry.env_dir.absolute())
    tail: collections.deque[str] = collections.deque(maxlen=400)
    proc = _subprocess.popen(cmd, env=env, stderr=subprocess.STDOUT)
    try:
        for line in proc.stdout or []:
            tail.append(line)
            if echo:
                echo(line.rstrip("\n"))
        code = proc.wait()
    except KeyboardInterrupt:
        _subprocess.stop(proc, grace=30)  # Snakemake removes the outputs of running jobs
        raise Interrupted() from None
    if code != 0:
        raise _failure(list(tail), code)
    return plan


def _failure(lines: list[str], code: int) -> WorkflowError:
    rule = log = None
    for i, line in enumerate(lines):
        if m := _FAILED_RULE.search(line):
            rule = m.group(1)
            for follow in lines[i + 1 : i + 30]:
                if lm := _LOG.match(follow):
                    log = lm.group(1)
                    break
    if rule is None:
        last = next((ln.strip() for ln in reversed(lines) if ln.strip()), f"exit code {code}")
        return WorkflowError(f"Snakemake failed: {last}")
    reason = ""
    if log and Path(log).is_file():
        errs = [ln.strip() for ln in Path(log).read_text().splitlines() if ln.strip()]
        errors = [ln for ln in errs if ln.startswith("Error")]
        reason = (errors or errs or [""])[-1]
    where = f"; see its log {log}" if log else ""
    return WorkflowError(f"Snakemake failed in rule {rule!r}{where}" +
                         (f": {reason}" if reason else ""))


def read_scores(plan: Plan) -> dict[str, dict[str, float]]:
    result: dict[str, dict[str, float]] = json.loads(plan.scores.read_text())
    return result

