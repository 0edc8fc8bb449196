"""Gradient-boosted trees with LightGBM's own API; weights: LightGBM's text model file.

Trained with deterministic=True and a fixed seed (one thread for training, so the trees
do not depend on the machine's core count); predicts with the job's threads.
"""

from __future__ import annotations

import os

import lightgbm as lgb
import numpy as np

FILE = "lgbm.txt"


class LGBM:
    def __init__(self, params: dict) -> None:
        self.params = params
        self.booster: lgb.Booster | None = None

    def fit(self, x, y, rounds: int = 300):
        data = lgb.Dataset(np.asarray(x, np.float64), label=np.asarray(y, np.float64),
                           params={"verbose": -1})
        self.booster = lgb.train({**self.params, "num_threads": 1}, data,
                                 num_boost_round=rounds)
        return self

    def predict(self, x):
        assert self.booster is not None, "no trees: fit or load first"
        return self.booster.predict(np.asarray(x), num_threads=_threads())

    def save(self, folder: str) -> None:
        assert self.booster is not None, "no trees: fit first"
        self.booster.save_model(os.path.join(folder, FILE))

    def load(self, folder: str) -> None:
        self.booster = lgb.Booster(model_file=os.path.join(folder, FILE))


def _threads() -> int:
    """The job's threads as the runner sets them (OMP_NUM_THREADS), else LightGBM's default."""
    try:
        return max(int(os.environ.get("OMP_NUM_THREADS", "0")), 0)
    except ValueError:
        return 0


def build(num_leaves: int = 4, learning_rate: float = 0.03, min_data_in_leaf: int = 20,
          feature_fraction: float = 0.8, bagging_fraction: float = 0.8,
          seed: int = 0) -> LGBM:
    return LGBM({"objective": "binary", "num_leaves": num_leaves,
                 "learning_rate": learning_rate, "min_data_in_leaf": min_data_in_leaf,
                 "feature_fraction": feature_fraction, "bagging_fraction": bagging_fraction,
                 "bagging_freq": 1, "seed": seed, "deterministic": True, "verbose": -1})
