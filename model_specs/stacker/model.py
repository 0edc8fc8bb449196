"""The ensembler: L2-regularised logistic regression on the base models' logits (numpy).

Fitted in blocks of rows, in place: besides the training matrix itself (turned into logits,
float32) it holds one block at a time, so 10M rows x 20 models need 800 MB, not 5 GB.
"""

import numpy as np

BLOCK = 1 << 16


class Stacker:
    def __init__(self, l2: float) -> None:
        self.l2 = l2
        self.coef = self.intercept = None

    @staticmethod
    def _logit(p):
        p = np.clip(np.asarray(p, np.float64), 1e-6, 1 - 1e-6)
        return np.log(p / (1 - p))

    def fit(self, x, y, iterations: int = 50):
        """Newton's method (IRLS) on [1, logit(x)]; gradient and Hessian summed by block."""
        x = np.array(x, np.float32, copy=False)
        if not x.flags.writeable:
            x = x.copy()
        for lo in range(0, len(x), BLOCK):
            x[lo:lo + BLOCK] = self._logit(x[lo:lo + BLOCK])
        y = np.asarray(y, np.float64)
        beta = np.zeros(x.shape[1] + 1)
        penalty = self.l2 * np.eye(len(beta))
        penalty[0, 0] = 0.0
        for _ in range(iterations):
            grad, hess = penalty @ beta, penalty.copy()
            for lo in range(0, len(x), BLOCK):
                z = np.column_stack([np.ones(len(x[lo:lo + BLOCK])), x[lo:lo + BLOCK]])
                p = 1 / (1 + np.exp(-z @ beta))
                grad += z.T @ (p - y[lo:lo + BLOCK])
                hess += (z * (p * (1 - p))[:, None]).T @ z
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
