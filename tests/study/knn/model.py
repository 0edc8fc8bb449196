"""k nearest neighbours, in numpy, for every task: the class frequencies among the k
nearest training rows (smoothed a little, so k=1 gives 0.99/0.01: a model that memorises
its training rows) or their mean value. The task is taken from the targets."""

import numpy as np


def _task(y):
    values = np.unique(y)
    if len(values) <= 2:
        return 0
    return 1 if np.all(values == np.round(values)) and len(values) <= 20 else 2


class KNN:
    def __init__(self, k):
        self.k, self.w = k, {}

    def fit(self, x, y):
        x = np.asarray(x, np.float64)
        scaler = np.stack([x.mean(0), x.std(0) + 1e-9])
        y = np.asarray(y)
        task = _task(y)
        self.w = {"knn-scaler-0": scaler, "knn-rows-0": (x - scaler[0]) / scaler[1],
                  "knn-targets-0": y.astype(np.float64), "knn-task-0": np.array(task)}
        if task != 2:
            self.w["knn-classes-0"] = np.unique(y).astype(np.float64)
        return self

    def predict(self, x):
        scaler, rows = self.w["knn-scaler-0"], self.w["knn-rows-0"]
        z = (np.asarray(x, np.float64) - scaler[0]) / scaler[1]
        d = (z ** 2).sum(1)[:, None] - 2 * z @ rows.T + (rows ** 2).sum(1)[None, :]
        near = np.argsort(d, axis=1, kind="stable")[:, : self.k]
        y = self.w["knn-targets-0"][near]
        task = int(self.w["knn-task-0"])
        if task == 2:
            return y.mean(1)
        classes = self.w["knn-classes-0"]
        counts = (y[:, :, None] == classes[None, None, :]).sum(1) + 0.01 * self.k
        p = counts / counts.sum(1, keepdims=True)
        return p[:, 1] if task == 0 else p

    def get_weights(self):
        return dict(self.w)

    def set_weights(self, w):
        self.w = dict(w)


def build(k: int = 15):
    return KNN(k)
