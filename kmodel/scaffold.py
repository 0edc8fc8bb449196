"""`kmodel init`: a new model's folder (spec and model.py) that works as written, and on
request its env spec. Nothing that exists is overwritten."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from kmodel._fs import atomic_write_text
from kmodel.errors import OutputNotWritableError, SpecError, UnknownEnvError
from kmodel.registry import ENVS, Registry
from kmodel.spec import DTYPES, NAME_RE

SPEC = """\
name: {name}
version: 0.1.0
description: {name} (written by `kmodel init`; say what it predicts)
env: {env}
entrypoint: model.py:build
args: {{seed: 0}}
train:                   # kmodel train {name} -i TRAIN.h5 -o {weights}
  args: {{epochs: 300, lr: 0.1}}
inputs:
  - {{name: {input}, dtype: {dtype}, shape: [{width}], doc: the features}}
outputs:
  - {{name: proba, dtype: float32, shape: [], doc: P(y = 1)}}
"""

MODEL = '''\
"""{name}: logistic regression in plain numpy, as `kmodel init` wrote it. Replace the
maths, keep the interface (the README's "The model interface"):

    build(**args)          -> the model (args: the spec's args)
    model.predict(x)       -> an array (one output) or a dict of arrays by output name
    model.fit(x, y, **a)   -> fit on a whole training set (a: the spec's train.args)
    model.get_weights()    -> {{name: array}}: saved as weights/<name>.npy (a list, names
                              with "/" or ".", bfloat16 or torch tensors: one
                              weights.safetensors; the env then needs safetensors)
    model.set_weights(w)   <- the same dict (or list), loaded before predict
    (or model.save(folder) / model.load(folder): native files such as .onnx, .keras,
    .weights.h5, xgboost .json/.ubj, lightgbm .txt; never pickles)

After every fit kmodel reloads the weights into a fresh model, which must predict the
training rows as the trained one does.

x is one array (rows, *shape) for a model with one input, a dict by input name for several.
"""

import numpy as np


class Model:
    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.w: dict[str, np.ndarray] = {{}}

    def predict(self, x):
        if not self.w:
            raise RuntimeError("{name} has no weights yet: kmodel train {name} -i TRAIN.h5 "
                               "-o {weights}")
        z = np.asarray(x, np.float64).reshape(len(x), -1)
        z = (z - self.w["{name}-scaler-0"][0]) / self.w["{name}-scaler-0"][1]
        return (1.0 / (1.0 + np.exp(-(z @ self.w["{name}-dense-0"] + self.w["{name}-bias-0"]))))

    def fit(self, x, y, epochs: int = 300, lr: float = 0.1):
        x = np.asarray(x, np.float64).reshape(len(x), -1)
        y = np.asarray(y, np.float64).reshape(len(y))
        scaler = np.stack([x.mean(0), x.std(0) + 1e-12])
        z = (x - scaler[0]) / scaler[1]
        w = np.random.default_rng(self.seed).normal(0, 0.01, z.shape[1])
        b = 0.0
        for _ in range(epochs):
            p = 1.0 / (1.0 + np.exp(-(z @ w + b)))
            w, b = w - lr * z.T @ (p - y) / len(y), b - lr * float(np.mean(p - y))
        self.w = {{"{name}-scaler-0": scaler, "{name}-dense-0": w,
                  "{name}-bias-0": np.array(b)}}
        return self

    def get_weights(self):
        return dict(self.w)

    def set_weights(self, w):
        self.w = dict(w)


def build(seed: int = 0) -> Model:
    return Model(seed)
'''

ENV = """\
# {name}: written by `kmodel init`; lock it with `kmodel env lock {name}`
description: numpy for {model}
python: "{python}"
pip:
  - numpy>=2
"""


def init(registry: Registry, name: str, env: str, *, inputs: str = "x:float32:1",
         new_env: bool = False) -> list[Path]:
    """Write the model ``name`` (and the env spec ``env`` if ``new_env``); return the files.

    ``inputs``: NAME:DTYPE:WIDTH of the one input (rows of WIDTH values)."""
    if not re.match(NAME_RE, name) or name == ENVS:
        raise SpecError("kmodel init", f"{name!r} is not a model name", field="NAME",
                        fix="start with a letter or digit, then letters, digits, '_', '.', "
                            f"'-' (and not {ENVS!r}, the folder of env specs)")
    if not re.match(NAME_RE, env):
        raise SpecError("kmodel init", f"{env!r} is not an env name", field="--env",
                        fix="use letters, digits, '_', '.', '-'")
    m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*):([a-z0-9]+):([1-9][0-9]*)", inputs)
    if not m or m[2] not in DTYPES:
        raise SpecError("kmodel init", f"--inputs {inputs!r} is not NAME:DTYPE:WIDTH",
                        field="--inputs", fix=f"e.g. x:float32:30; dtypes: {', '.join(DTYPES)}")
    folder = (registry.specs[0] if registry.specs else Path("model_specs")) / name
    env_spec = registry.env_dir / f"{env}.yaml"
    if name in registry.model_paths() or folder.exists():
        raise OutputNotWritableError(folder, f"model {name!r} exists already",
                                     "choose another name")
    if new_env and env_spec.exists():
        raise OutputNotWritableError(env_spec, f"env {env!r} exists already",
                                     "leave out --new-env to use it")
    if not new_env and env not in registry.env_names():
        raise UnknownEnvError(env, registry.env_dir, registry.env_names(),
                              "kmodel init (pass --new-env to write its spec)")
    weights = folder / "weights"
    written = []
    folder.mkdir(parents=True)
    for path, text in ((folder / "model.yaml", SPEC.format(
            name=name, env=env, weights=weights, input=m[1], dtype=m[2], width=m[3])),
                       (folder / "model.py", MODEL.format(name=name, weights=weights))):
        atomic_write_text(path, text)
        written.append(path)
    if new_env:
        registry.env_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(env_spec, ENV.format(
            name=env, model=name, python=f"{sys.version_info[0]}.{sys.version_info[1]}"))
        written.append(env_spec)
    return written


__all__ = ["init"]
