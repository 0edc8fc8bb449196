"""A composition's plan: every file it reads and writes, derived from its config.

Shared by the Snakefile (which turns it into rules), `kmodel run` and `kmodel status`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from kmodel._fs import check_input_file
from kmodel.errors import SpecError
from kmodel.loader import load_compose_config
from kmodel.registry import Registry
from kmodel.spec import ComposeConfig

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Plan:
    """Every file of a composition, derived from its config."""

    config: ComposeConfig
    #: where models and envs are found besides the config's ``specs``/``envs`` (the CLI's)
    base: Registry = field(default_factory=Registry, compare=False)

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

    def shard(self, model: str, split: str, k: int | str) -> Path:
        return self.root / "preds" / model / "shards" / f"{split}-{k}.h5"

    def registry(self, base: Registry | None = None) -> Registry:
        """Where models and envs are found: the config's ``specs``/``envs`` first, then
        ``base`` (the command line's), then KMODEL_PATH/KMODEL_ENVS and ./model_specs, ./envs.
        One Registry per plan (it caches what it has read)."""
        if base is None or base is self.base:
            return self._registry
        return Plan(self.config, base)._registry

    @cached_property
    def _registry(self) -> Registry:
        specs = [Path(s) for s in self.config.specs] + list(self.base.specs)
        return Registry(specs, Path(self.config.envs) if self.config.envs else self.base.envs_dir)

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

    def check(self, registry: Registry, source: Path | str = "the composition") -> None:
        """Fail early (before Snakemake starts: a job that fails loses its old outputs) on
        missing folders or data, unknown models or envs, a missing or stale lockfile
        (KM200/KM201) and weight files that differ from their spec's hashes (KM301)."""
        from kmodel.envs import backend_for
        from kmodel.weights import Weights

        for key, folder in [*(("specs", d) for d in self.config.specs),
                            *([("envs", self.config.envs)] if self.config.envs else [])]:
            if not Path(folder).is_dir():
                raise SpecError(source, f"{folder} is not a folder (relative to {Path.cwd()})",
                                field=key, fix="give an existing folder")
        for split in SPLITS:  # given data files must exist: Snakemake might not rerun a job
            if given := getattr(self.config.data, split):
                check_input_file(Path(given))
        envs = {}
        for name in [*self.config.models, self.config.ensembler]:
            model = registry.model(name)
            ref = registry.env_of(model)
            envs[ref.name] = ref
            if weights := Weights.of(model):
                weights.verify(name)
        for ref in envs.values():
            backend_for(ref).checked_lockfile(ref)


def load_plan(path: Path, registry: Registry) -> Plan:
    plan = Plan(load_compose_config(path), registry)
    plan.check(plan.registry(), path)
    return plan
