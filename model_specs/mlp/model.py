"""A one-hidden-layer perceptron in plain numpy 2, trained with full-batch Adam."""

import numpy as np


class MLP:
    def __init__(self, hidden: int, seed: int) -> None:
        self.hidden, self.seed = hidden, seed
        self.w: dict[str, np.ndarray] = {}

    def _forward(self, x):
        w = self.w
        z = (x - w["mlp-scaler-0"][0]) / w["mlp-scaler-0"][1]
        h = np.tanh(z @ w["mlp-dense-0"] + w["mlp-bias-0"])
        return z, h, 1.0 / (1.0 + np.exp(-(h @ w["mlp-dense-1"] + w["mlp-bias-1"])))

    def fit(self, x, y, epochs: int = 300, lr: float = 0.01, l2: float = 1e-3):
        rng = np.random.default_rng(self.seed)
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        d = x.shape[1]
        self.w = {"mlp-scaler-0": np.stack([x.mean(0), x.std(0) + 1e-12]),
                  "mlp-dense-0": rng.normal(0, d ** -0.5, (d, self.hidden)),
                  "mlp-bias-0": np.zeros(self.hidden),
                  "mlp-dense-1": rng.normal(0, self.hidden ** -0.5, self.hidden),
                  "mlp-bias-1": np.zeros(())}
        trained = [k for k in self.w if k != "mlp-scaler-0"]
        m = {k: np.zeros_like(self.w[k]) for k in trained}
        v = {k: np.zeros_like(self.w[k]) for k in trained}
        for t in range(1, epochs + 1):
            z, h, p = self._forward(x)
            err = (p - y) / len(y)
            dh = np.outer(err, self.w["mlp-dense-1"]) * (1 - h ** 2)
            grads = {"mlp-dense-1": h.T @ err + l2 * self.w["mlp-dense-1"],
                     "mlp-bias-1": err.sum(), "mlp-dense-0": z.T @ dh + l2 * self.w["mlp-dense-0"],
                     "mlp-bias-0": dh.sum(0)}
            for k, g in grads.items():
                m[k] = 0.9 * m[k] + 0.1 * g
                v[k] = 0.999 * v[k] + 0.001 * g ** 2
                step = lr * (m[k] / (1 - 0.9 ** t)) / (np.sqrt(v[k] / (1 - 0.999 ** t)) + 1e-8)
                self.w[k] = self.w[k] - step
        return self

    def predict(self, x):
        return self._forward(np.asarray(x, np.float64))[2]

    def get_weights(self):
        return dict(self.w)

    def set_weights(self, w):
        self.w = dict(w)


def build(hidden: int = 16, seed: int = 0) -> MLP:
    return MLP(hidden, seed)
