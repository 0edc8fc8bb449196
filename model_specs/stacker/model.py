"""The ensembler: L2-regularised logistic regression on the base models' logits (numpy)."""

import numpy as np


class Stacker:
    def __init__(self, l2: float) -> None:
        self.l2 = l2
        self.coef = self.intercept = None

    @staticmethod
    def _logit(p):
        p = np.clip(np.asarray(p, np.float64), 1e-6, 1 - 1e-6)
        return np.log(p / (1 - p))

    def fit(self, x, y, iterations: int = 50):
        """Newton's method (IRLS) on [1, logit(x)]."""
        z = np.column_stack([np.ones(len(x)), self._logit(x)])
        beta = np.zeros(z.shape[1])
        penalty = self.l2 * np.eye(z.shape[1])
        penalty[0, 0] = 0.0
        for _ in range(iterations):
            p = 1 / (1 + np.exp(-z @ beta))
            grad = z.T @ (p - y) + penalty @ beta
            hess = (z * (p * (1 - p))[:, None]).T @ z + penalty
            beta -= np.linalg.solve(hess, grad)
        self.intercept, self.coef = beta[:1], beta[1:]
        return self

    def predict(self, x):
        return 1 / (1 + np.exp(-(self._logit(x) @ self.coef + self.intercept[0])))

    def get_weights(self):
        return {"stacker-coef-0": self.coef, "stacker-intercept-0": self.intercept}

    def set_weights(self, w):
        self.coef, self.intercept = w["stacker-coef-0"], w["stacker-intercept-0"]


def build(l2: float = 1.0) -> Stacker:
    return Stacker(l2)
