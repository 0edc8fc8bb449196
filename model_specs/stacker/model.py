"""The ensembler: a stacked generalisation of the base models' out-of-fold predictions, for
each task (numpy only).

- binary: L2-regularised logistic regression on the base models' logits;
- multiclass: a multinomial model on the base models' per-class log-probabilities, one
  weight per model shared by its classes (log-linear pooling) plus a bias per class;
- regression: non-negative least squares on the base models' values, with an intercept.

``nonneg: true`` keeps every base model's weight >= 0 in the first two as well (it always
is in the third). Raw input features passed through by the composition (``n_raw`` columns
after the models') enter standardised, with free signs. The composer tells ``fit`` the
task, the classes and the columns' layout; without it (a bare call) the task is inferred.

Fitted in blocks of rows: besides the training matrix itself it holds one block at a time.
"""

import numpy as np

BLOCK = 1 << 16
TASKS = ("binary", "multiclass", "regression")
EPS = 1e-6


def _log(p):
    return np.log(np.clip(np.asarray(p, np.float64), EPS, 1 - EPS))


def _logit(p):
    p = np.clip(np.asarray(p, np.float64), EPS, 1 - EPS)
    return np.log(p / (1 - p))


def _infer(y):
    values = np.unique(y)
    if len(values) <= 2:
        return "binary"
    integral = np.all(values == np.round(values))
    return "multiclass" if integral and len(values) <= 20 else "regression"


class Stacker:
    def __init__(self, l2: float, nonneg: bool) -> None:
        self.l2, self.nonneg = float(l2), bool(nonneg)
        self.w: dict[str, np.ndarray] = {}

    # -- the layout: task, classes, models, raw columns --------------------------------

    def _layout(self):
        if "stacker-layout-0" not in self.w:  # weights of the binary-only stacker 1.x
            return "binary", 1, len(self.w["stacker-coef-0"]), 0
        task, k, m, r = (int(v) for v in self.w["stacker-layout-0"])
        return TASKS[task], k, m, r

    def _raw(self, x, m):
        """The raw columns, standardised as in training."""
        if x.shape[1] == m:
            return np.zeros((len(x), 0))
        mean, std = self.w["stacker-raw-0"]
        return (np.asarray(x[:, m:], np.float64) - mean) / std

    # -- fitting -----------------------------------------------------------------------

    def fit(self, x, y, iterations: int = 50, *, task=None, classes=None, n_models=None,
            n_raw=0, **_):
        x = np.asarray(x)
        y = np.asarray(y)
        task = task or _infer(y)
        classes = np.asarray(classes if classes is not None else np.unique(y))
        k = len(classes) if task == "multiclass" else 1
        m = n_models if n_models is not None else (x.shape[1] - n_raw) // k
        if m < 1 or m * k + n_raw != x.shape[1]:
            raise ValueError(f"{x.shape[1]} columns do not make {m} models x {k} values + "
                             f"{n_raw} raw features")
        if n_raw:
            raw = np.asarray(x[:, m * k:], np.float64)
            self.w["stacker-raw-0"] = np.stack([raw.mean(0), raw.std(0) + 1e-12])
        self.w["stacker-layout-0"] = np.array([TASKS.index(task), k, m, n_raw], np.int64)
        if task == "binary":
            self._fit_binary(x, (y == classes[-1]).astype(np.float64), m, iterations)
        elif task == "multiclass":
            self._fit_multiclass(x, np.searchsorted(classes, y), k, m, iterations)
        else:
            self._fit_regression(x, np.asarray(y, np.float64), m)
        return self

    def _binary_features(self, x, m):
        return np.column_stack([_logit(x[:, :m]), self._raw(x, m)])

    def _fit_binary(self, x, y, m, iterations):
        """Newton's method (IRLS) on [1, logit(p), raw]; with nonneg, a projected Newton
        step keeps the models' weights >= 0."""
        f = self._binary_features(x[:0], m).shape[1]
        beta = np.zeros(f + 1)
        penalty = self.l2 * np.eye(f + 1)
        penalty[0, 0] = 0.0
        bounded = np.zeros(f + 1, bool)
        bounded[1:m + 1] = self.nonneg
        for _ in range(iterations):
            grad, hess = penalty @ beta, penalty.copy()
            for lo in range(0, len(x), BLOCK):
                z = np.column_stack([np.ones(len(x[lo:lo + BLOCK])),
                                     self._binary_features(x[lo:lo + BLOCK], m)])
                p = 1 / (1 + np.exp(-z @ beta))
                grad += z.T @ (p - y[lo:lo + BLOCK])
                hess += (z * (p * (1 - p))[:, None]).T @ z
            free = ~(bounded & (beta <= 0) & (grad > 0))
            step = np.zeros_like(beta)
            step[free] = np.linalg.solve(hess[np.ix_(free, free)], grad[free])
            beta = beta - step
            beta[bounded] = np.maximum(beta[bounded], 0.0)
        self.w["stacker-coef-0"], self.w["stacker-intercept-0"] = beta[1:], beta[:1]

    def _pool_features(self, x, k, m):
        """Per row and class: the models' log-probabilities of that class (rows, k, m)."""
        return _log(x[:, :m * k]).reshape(len(x), m, k).transpose(0, 2, 1)

    def _pool_scores(self, x, k, m, theta):
        w, b = theta[:m], theta[m:m + k]
        s = self._pool_features(x, k, m) @ w + b
        raw = self._raw(x, m * k)
        if raw.shape[1]:
            s = s + raw @ theta[m + k:].reshape(raw.shape[1], k)
        return s

    def _fit_multiclass(self, x, index, k, m, iterations):
        """Newton's method on the pooled multinomial: score_c = b_c + sum_m w_m log p_mc
        (+ raw features, a weight per class each)."""
        r = x.shape[1] - m * k
        n_par = m + k + r * k
        theta = np.zeros(n_par)
        theta[:m] = 1.0 / m  # start from the geometric mean of the models
        penalty = self.l2 * np.eye(n_par)
        penalty[m:m + k, m:m + k] = 0.0
        bounded = np.zeros(n_par, bool)
        bounded[:m] = self.nonneg
        eye = np.eye(k)
        for _ in range(iterations):
            grad, hess = penalty @ theta, penalty.copy()
            for lo in range(0, len(x), BLOCK):
                block = x[lo:lo + BLOCK]
                phi = np.concatenate([self._pool_features(block, k, m),
                                      np.broadcast_to(eye, (len(block), k, k))], axis=2)
                raw = self._raw(block, m * k)
                if r:  # raw feature j, class c: phi[:, c, m + k + j*k + c] = raw[:, j]
                    extra = np.einsum("nj,ck->ncjk", raw, eye).reshape(len(block), k, r * k)
                    phi = np.concatenate([phi, extra], axis=2)
                s = phi @ theta
                s -= s.max(axis=1, keepdims=True)
                p = np.exp(s)
                p /= p.sum(axis=1, keepdims=True)
                onehot = eye[index[lo:lo + BLOCK]]
                grad += np.einsum("nc,ncp->p", p - onehot, phi)
                mean = np.einsum("nc,ncp->np", p, phi)
                hess += np.einsum("nc,ncp,ncq->pq", p, phi, phi) - mean.T @ mean
            free = ~(bounded & (theta <= 0) & (grad > 0))
            step = np.zeros_like(theta)
            step[free] = np.linalg.lstsq(hess[np.ix_(free, free)], grad[free], rcond=None)[0]
            theta = theta - step
            theta[bounded] = np.maximum(theta[bounded], 0.0)
        self.w["stacker-coef-0"], self.w["stacker-intercept-0"] = theta[:m], theta[m:m + k]
        self.w["stacker-raw-coef-0"] = theta[m + k:]

    def _fit_regression(self, x, y, m, sweeps: int = 2000):
        """Non-negative least squares with an intercept: coordinate descent on the centred
        normal equations (a small ridge keeps collinear models well posed)."""
        z = np.column_stack([np.asarray(x[:, :m], np.float64), self._raw(x, m)])
        mean = z.mean(0)
        zc = z - mean
        gram = zc.T @ zc + self.l2 * np.eye(z.shape[1])
        rhs = zc.T @ (y - y.mean())
        beta = np.zeros(z.shape[1])
        lower = np.where(np.arange(z.shape[1]) < m, 0.0, -np.inf)
        for _ in range(sweeps):
            before = beta.copy()
            for j in range(len(beta)):
                beta[j] = max(lower[j], beta[j] + (rhs[j] - gram[j] @ beta) / gram[j, j])
            if np.max(np.abs(beta - before)) < 1e-12 * (1 + np.max(np.abs(beta))):
                break
        self.w["stacker-coef-0"] = beta
        self.w["stacker-intercept-0"] = np.array([y.mean() - mean @ beta])

    # -- predicting ----------------------------------------------------------------------

    def predict(self, x):
        x = np.asarray(x)
        task, k, m, _ = self._layout()
        coef, intercept = self.w["stacker-coef-0"], self.w["stacker-intercept-0"]
        if task == "binary":
            return 1 / (1 + np.exp(-(self._binary_features(x, m) @ coef + intercept[0])))
        if task == "multiclass":
            theta = np.concatenate([coef, intercept, self.w.get("stacker-raw-coef-0",
                                                                 np.zeros(0))])
            s = self._pool_scores(x, k, m, theta)
            s -= s.max(axis=1, keepdims=True)
            p = np.exp(s)
            return p / p.sum(axis=1, keepdims=True)
        raw = self._raw(x, m)
        return np.column_stack([np.asarray(x[:, :m], np.float64), raw]) @ coef + intercept[0]

    def column_weights(self):
        """One weight per input column: each model's weight on its columns, then the raw
        features' (for multiclass, their largest weight over the classes)."""
        task, k, m, r = self._layout()
        coef = self.w["stacker-coef-0"]
        if task == "multiclass":
            raw = np.abs(self.w["stacker-raw-coef-0"].reshape(r, k)).max(axis=1) if r else []
            return np.concatenate([np.repeat(coef, k), raw])
        return coef

    def get_weights(self):
        return dict(self.w)

    def set_weights(self, w):
        self.w = dict(w)


def build(l2: float = 1.0, nonneg: bool = False) -> Stacker:
    return Stacker(l2, nonneg)
