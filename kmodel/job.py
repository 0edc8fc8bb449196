"""The host/runner job: one typed, versioned definition that both sides load.

The host (kmodel/predict.py) writes a Job as JSON; the runner (kmodel/runner.py, in the
model's env) reads it. This module imports only the standard library, because the runner
loads it by file path (nothing of kmodel is installed in model envs).

A predict job holds one or more tasks (input file, row range, output file) for one model:
one runner process, one env start-up and one model build serve them all (both splits of a
composition, or several shards).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

VERSION = 2


@dataclass(frozen=True)
class Task:
    """Predict rows [start, stop) of ``input`` into ``output`` (a working file)."""

    input: str
    output: str
    output_name: str  # the final name, for messages
    start: int
    stop: int
    resume: bool = False
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Job:
    mode: str  # "predict" or "train"
    model_name: str
    model_dir: str
    entrypoint: str
    args: dict[str, Any]
    inputs: dict[str, str]  # input name -> the dtype the spec promises the model
    outputs: dict[str, list[Any]] = field(default_factory=dict)  # name -> [dtype, shape]
    weights_dir: str | None = None
    weights: list[str] = field(default_factory=list)
    batch_size: int = 8192
    host_pid: int = 0
    tasks: list[Task] = field(default_factory=list)
    #: the input's columns are stored predictions (the composer): their names, for errors;
    #: NaN or inf in them is refused
    columns: list[str] = field(default_factory=list)
    # train only
    input: str = ""
    targets: str = ""
    train_args: dict[str, Any] = field(default_factory=dict)
    #: what the composer tells an ensembler's fit (task, classes, models, raw columns)
    fit_args: dict[str, Any] = field(default_factory=dict)
    weights_out: str = ""
    output_name: str = ""
    #: where to write a sample of the training rows and the trained model's predictions
    #: of them (the host's reload check); "" for none
    reload_sample: str = ""
    version: int = VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Job:
        data = json.loads(text)
        if data.get("version") != VERSION:
            raise ValueError(f"job format version {data.get('version')!r}; this runner reads "
                             f"version {VERSION} (kmodel and its runner differ?)")
        data["tasks"] = [Task(**t) for t in data.get("tasks", [])]
        return cls(**data)
