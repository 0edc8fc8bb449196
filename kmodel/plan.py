"""A composition's plan: every file it reads and writes, derived from its config.

Shared by the Snakefile (which turns it into rules), `kmodel run` and `kmodel status`.

How the ensembler's training rows are kept apart from the base models' (``method``):

- ``cv`` (the default when every base model is trainable): the train split is cut into K
  folds; each base model is fitted on K-1 of them and predicts the K-th
  (``weights/MODEL/fold-K``, ``preds/MODEL/folds/holdout-K.h5``), and these out-of-fold
  predictions, gathered in the train split's order, are its level-one data
  (``preds/MODEL/train.h5``); it is refitted on the whole train split
  (``weights/MODEL/full``) for its test predictions.
- ``holdout`` (the default otherwise): the base models keep their own weights and predict
  the blend rows (``data: blend``), which they were never trained on.
- ``in-sample``: the base models predict the rows they were trained on (flagged).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from kmodel._fs import check_input_file
from kmodel.errors import SpecError, ToolMissingError
from kmodel.loader import load_compose_config
from kmodel.registry import Registry
from kmodel.spec import ComposeConfig, Method, ResourcesSpec

SPLITS = ("train", "test")
#: the split whose predictions the ensembler is fitted on, by method
LEVEL_ONE: dict[str, str] = {"cv": "train", "in-sample": "train", "holdout": "blend"}
FIT, HOLDOUT = "fit", "holdout"


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

    @cached_property
    def method(self) -> Method:
        """How the ensembler's rows are kept apart: as configured, else cv when every base
        model can be trained (a ``train:`` entry) and there is a train split, else holdout
        (the base models' own weights, the ensembler fitted on ``data: blend``)."""
        if self.config.stacking.method is not None:
            return self.config.stacking.method
        reg = self._registry
        data = self.config.data
        trainable = all(reg.model(m).spec.train is not None for m in self.config.models)
        return "cv" if trainable and (data.builtin or data.train) else "holdout"

    @property
    def level_one(self) -> str:
        return LEVEL_ONE[self.method]

    @property
    def splits(self) -> tuple[str, str]:
        """The splits the base models' predictions are made for: the level-one and test."""
        return (self.level_one, "test")

    @property
    def folds(self) -> int:
        return self.config.stacking.folds

    def source(self, model: str) -> str:
        """What a model reads: ``data``, or its own input file (fed by other models)."""
        return model if model in self.config.inputs else "data"

    def data_of(self, model: str, split: str) -> Path:
        """The input file a model reads for a split: the data's, or the one assembled for it
        from the data and other models' predictions (``inputs:``)."""
        if model in self.config.inputs:
            return self.inputs_file(model, split)
        return self.data(split)

    def inputs_file(self, model: str, split: str) -> Path:
        """Where the input file of a model fed by other models is assembled."""
        return self.root / "inputs" / model / f"{split}.h5"

    def fold(self, k: int | str, part: str, source: str = "data") -> Path:
        return self.root / "folds" / source / f"fold-{k}-{part}.h5"

    def fold_weights(self, model: str, k: int | str) -> Path:
        return self.root / "weights" / model / f"fold-{k}"

    def fold_preds(self, model: str, k: int | str) -> Path:
        return self.root / "preds" / model / "folds" / f"holdout-{k}.h5"

    def full_weights(self, model: str) -> Path:
        return self.root / "weights" / model / "full"

    @property
    def figure(self) -> Path:
        return self.root / "scores.svg"

    def _check_inputs(self, registry: Registry, model: str, source: Path | str) -> None:
        spec = registry.model(model).spec
        given = self.config.sources_of(model)
        names = [i.name for i in spec.inputs]
        if sorted(given) != sorted(names):
            raise SpecError(source, f"inputs of {model!r} name {sorted(given)}; its spec's "
                            f"inputs are {names}", field=f"inputs.{model}",
                            fix="give a source for each input of the model, and no other")
        for src in (s for sources in given.values() for s in sources):
            origin, _, output = src.partition(".")
            if origin != "data" and output not in [
                    o.name for o in registry.model(origin).spec.outputs]:
                raise SpecError(source, f"inputs of {model!r}: model {origin!r} has no output "
                                f"{output!r}", field=f"inputs.{model}",
                                fix="name one of its outputs")
        if self.config.shards_of(model) > 1:
            raise SpecError(source, f"{model!r} is fed by other models: its predictions are "
                            "not sharded", field="shards", fix=f"remove {model} from shards")

    def assembled(self, model: str, split: str) -> list[tuple[str, Path, str]]:
        """Where each input of a model fed by other models comes from, for a split:
        (input, file, dataset)."""
        out = []
        for name, sources in self.config.sources_of(model).items():
            for src in sources:
                origin, _, dataset = src.partition(".")
                if origin == "data":
                    out.append((name, self.data(split), f"/inputs/{dataset}"))
                else:
                    out.append((name, self.preds(origin, split), f"/preds/{dataset}"))
        return out

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
        return Registry(specs, [Path(self.config.envs)] if self.config.envs else self.base.envs)

    @property
    def ensembler_weights(self) -> Path:
        return self.root / "ensembler" / self.config.ensembler

    @property
    def ensemble(self) -> Path:
        return self.root / "ensemble" / "test.h5"

    @property
    def scores(self) -> Path:
        return self.root / "scores.json"

    def resources(self, registry: Registry, model: str) -> ResourcesSpec:
        """What each job of ``model`` needs: the composition's ``resources:`` for it over
        its spec's (each value given wins; unset values: 1 thread, MEM_MB, no GPU)."""
        from kmodel.defaults import MEM_MB

        spec = registry.model(model).spec.resources
        given = self.config.resources.get(model, ResourcesSpec()).over(spec)
        return ResourcesSpec(threads=given.threads or 1, mem_mb=given.mem_mb or MEM_MB,
                             gpus=given.gpus or 0)

    def device(self, registry: Registry, model: str) -> str:
        """The device ``model``'s jobs ask for: its spec's ``device:``, else cuda when its
        resources (the composition's over its spec's) give it GPUs."""
        from kmodel.resources import default_device

        return default_device(registry.model(model).spec.device,
                              self.resources(registry, model).gpus)

    def model_log(self, *parts: str) -> Path:
        """The log of a model's own stdout and stderr in a job (beside the job's log)."""
        return self.root / "logs" / "models" / ("_".join(parts) + ".log")

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
        self._check_method(registry, source)
        self._check_data(source)
        envs = {}
        for name in [*self.config.models, self.config.ensembler]:
            model = registry.model(name)
            ref = registry.env_of(model)
            envs[ref.name] = ref
            own = self.method != "cv" or name == self.config.ensembler
            if own and (weights := Weights.of(model)):  # cv trains its own: not these
                weights.verify(name)
        for ref in envs.values():
            backend_for(ref).checked_lockfile(ref)

    def _check_data(self, source: Path | str) -> None:
        """What ``data:`` needs: scikit-learn in kmodel's own environment for builtin data;
        given files that exist (Snakemake might not rerun a job) and hold /inputs, ids and
        the targets (every split is fitted on or scored against them)."""
        import importlib.util

        from kmodel.io import hdf5

        data, name = self.config.data, self.config.targets
        if data.builtin and importlib.util.find_spec("sklearn") is None:
            raise ToolMissingError(f"{source}: data: builtin: {data.builtin} needs "
                                   "scikit-learn where kmodel runs (pip install "
                                   "'kmodel-ensembles[demo]'), or give data: {train: FILE, "
                                   "test: FILE}")
        for split in ("train", "test", "blend"):
            if not (given := getattr(data, split)):
                continue
            path = Path(given)
            check_input_file(path)
            try:
                inputs, _ = hdf5.describe(path, "inputs")
                targets, _ = hdf5.describe(path, "targets")
            except (OSError, ValueError) as e:
                raise SpecError(source, f"{path} is not a kmodel input file ({e})",
                                field=f"data.{split}", fix="give an HDF5 file with /inputs/"
                                "<name>, /targets/<name> and /metadata/id (kmodel data "
                                "import TABLE makes one)") from None
            if not inputs:
                raise SpecError(source, f"{path} has no /inputs datasets",
                                field=f"data.{split}", fix="give the file with the features")
            if name not in targets:
                raise SpecError(source, f"{path} has no /targets/{name} (found "
                                f"{sorted(targets) or 'none'}); every split is fitted on "
                                "or scored against the targets", field=f"data.{split}",
                                fix="set targets: to the name it holds, or add the targets "
                                "(kmodel data import --target COLUMN)")

    def _check_method(self, registry: Registry, source: Path | str) -> None:
        """The method's needs: trainable models and a train split for cv, blend rows for
        holdout; and an ensembler that can be trained."""
        cfg, method = self.config, self.method
        if registry.model(cfg.ensembler).spec.train is None:
            raise SpecError(source, f"the ensembler {cfg.ensembler!r} has no train: entry in "
                            "its spec, so it cannot be fitted", field="ensembler",
                            fix="give an ensembler that can be trained, e.g. stacker")
        untrainable = [m for m in cfg.models if registry.model(m).spec.train is None]
        if method == "cv" and untrainable:
            raise SpecError(source, f"models {untrainable} have no train: entry, so they "
                            "cannot be cross-fitted", field="stacking.method",
                            fix="give data: {blend: FILE} (rows they were never trained on) "
                            "and stacking: {method: holdout}, or stacking: {method: in-sample}"
                            " (every score is then flagged)")
        if method == "holdout" and not cfg.data.blend:
            why = f"models {untrainable} cannot be trained, so" if untrainable and \
                cfg.stacking.method is None else "stacking: holdout:"
            raise SpecError(source, f"{why} the ensembler must be fitted on rows the base "
                            "models never saw, and data has no blend: file", field="data.blend",
                            fix="give data: {blend: FILE, test: FILE}, or stacking: {method: "
                            "in-sample} to accept in-sample stacking (flagged)")
        if method != "holdout" and not (cfg.data.builtin or cfg.data.train):
            raise SpecError(source, f"stacking: {method} needs a train split", field="data",
                            fix="give data: {train: FILE, test: FILE} (or builtin:)")
        for model in cfg.inputs:  # each input it names, fed by a prediction its model makes
            self._check_inputs(registry, model, source)
        if method == "cv" and any(cfg.shards_of(m) > 1 for m in cfg.models):
            raise SpecError(source, "shards apply to models that predict with their own "
                            "weights (stacking: holdout or in-sample); with cv each fold is "
                            "a job of its own already", field="shards", fix="remove shards")


def load_plan(path: Path, registry: Registry) -> Plan:
    plan = Plan(load_compose_config(path), registry)
    plan.check(plan.registry(), path)
    return plan
