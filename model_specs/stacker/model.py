"""The ensembler: a stacked generalisation of the base models' out-of-fold predictions, for
each task (numpy only).

- binary: L2-regularised logistic regression on the base models' logits (``l2``, an
  absolute penalty: it matters on a few hundred level-one rows, where a stacker overfits,
  and fades with more);
- multiclass: a multinomial model on the base models' per-class log-probabilities, one
  weight per model shared by its classes (log-linear pooling) plus a bias per class;
- regression: non-negative least squares on the base models' values, with an intercept.

``nonneg: true`` keeps every base model's weight >= 0 in the first two as well (it always
is in the third). Raw input features passed through by the composition (``n_raw`` columns
after the models') enter standardised, with free signs. The composer tells ``fit`` the
task, the classes and the columns' layout; without it (a bare call) the task is inferred.

Before it settles, the stacker cross-validates itself on the level-one rows (``cv_folds``
folds, at most CV_ROWS rows): if its cross-validated loss is no better than the best single
model's loss on those rows, it keeps that model alone (the discrete Super Learner's
choice), so a few level-one rows cannot make it worse than its best input. Its
cross-validated loss and its choice are in ``fit_report()``.

Fitted in blocks of rows: besides the training matrix itself it holds one block at a time.
"""

import numpy as np

BLOCK = 1 << 16
TASKS = ("binary", "multiclass", "regression")
EPS = 1e-6
CV_ROWS = 100_000


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


def _loss(task, target, pred):
    """Mean log-loss (classification) or squared error (regression)."""
    if task == "binary":
        p = np.clip(pred, 1e-12, 1 - 1e-12)
        return float(-np.mean(target * np.log(p) + (1 - target) * np.log(1 - p)))
    if task == "multiclass":
        return float(-np.mean(np.log(np.clip(pred[np.arange(len(target)), target], 1e-12,
                                             None))))
    return float(np.mean((target - pred) ** 2))


class Stacker:
    def __init__(self, l2: float, nonneg: bool, cv_folds: int = 5) -> None:
        self.l2, self.nonneg, self.cv_folds = float(l2), bool(nonneg), int(cv_folds)
        self.w: dict[str, np.ndarray] = {}
        self.report: dict = {}

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
        target = (y == classes[-1]).astype(np.float64) if task == "binary" else \
            np.searchsorted(classes, y) if task == "multiclass" else np.asarray(y, np.float64)
        best = self._cross_validate(x, target, iterations)
        if best is None:
            self._fit(x, target, iterations)
        else:
            self._keep_one(best)
        return self

    def _fit(self, x, target, iterations):
        task, k, m, _ = self._layout()
        if task == "binary":
            self._fit_binary(x, target, m, iterations)
        elif task == "multiclass":
            self._fit_multiclass(x, target, k, m, iterations)
        else:
            self._fit_regression(x, target, m)

    def _single(self, x, index):
        """Base model ``index``'s own prediction, as the task takes it."""
        task, k, _, _ = self._layout()
        if task == "multiclass":
            p = np.asarray(x[:, index * k:(index + 1) * k], np.float64)
            return p / np.clip(p.sum(axis=1, keepdims=True), 1e-12, None)
        return np.asarray(x[:, index], np.float64)

    def _cross_validate(self, x, target, iterations):
        """The stacker's own cross-validated loss on (at most CV_ROWS of) the level-one
        rows, against each base model's; the index of the best model when none of the
        stacker's fits beats it, else None (fit the stacker)."""
        task, _, m, _ = self._layout()
        rng = np.random.default_rng(0)
        rows = np.sort(rng.permutation(len(x))[:CV_ROWS])
        if len(rows) < 2 * self.cv_folds:
            return None
        xs, ts = x[rows], target[rows]
        fold = rng.permutation(len(rows)) % self.cv_folds
        pred = None
        for f in range(self.cv_folds):
            sub = Stacker(self.l2, self.nonneg, self.cv_folds)
            sub.w = {key: v for key, v in self.w.items()}
            sub._fit(xs[fold != f], ts[fold != f], iterations)
            part = sub.predict(xs[fold == f])
            if pred is None:
                pred = np.empty((len(rows), *part.shape[1:]))
            pred[fold == f] = part
        mine = _loss(task, ts, pred)
        singles = [_loss(task, ts, self._single(xs, i)) for i in range(m)]
        best = int(np.argmin(singles))
        keep = singles[best] <= mine
        metric = "rmse" if task == "regression" else "log_loss"
        cv = np.sqrt(min(mine, singles[best]) if keep else mine) if task == "regression" \
            else (singles[best] if keep else mine)
        self.report = {"metric": metric, "cv": float(cv), "rows": int(len(rows)),
                       "folds": self.cv_folds, "stacking_cv": float(
                           np.sqrt(mine) if task == "regression" else mine),
                       "chose": f"model {best}" if keep else "stacking"}
        return best if keep else None

    def _keep_one(self, index):
        """Weights that give base model ``index``'s prediction, and nothing else."""
        task, k, m, r = self._layout()
        coef = np.zeros(m + (r if task != "multiclass" else 0))
        coef[index] = 1.0
        self.w["stacker-coef-0"] = coef
        self.w["stacker-intercept-0"] = np.zeros(k if task == "multiclass" else 1)
        self.w["stacker-raw-coef-0"] = np.zeros(r * k if task == "multiclass" else 0)

    def _binary_features(self, x, m):
        return np.column_stack([_logit(x[:, :m]), self._raw(x, m)])

    def _binary_objective(self, x, y, m, beta, penalty):
        total = 0.5 * beta @ penalty @ beta
        for lo in range(0, len(x), BLOCK):
            z = np.column_stack([np.ones(len(x[lo:lo + BLOCK])),
                                 self._binary_features(x[lo:lo + BLOCK], m)]) @ beta
            total += np.sum(np.logaddexp(0, z) - y[lo:lo + BLOCK] * z)
        return total

    def _fit_binary(self, x, y, m, iterations):
        """Newton's method (IRLS) on [1, logit(p), raw], with a backtracking line search;
        with nonneg, a projected Newton step keeps the models' weights >= 0."""
        f = self._binary_features(x[:0], m).shape[1]
        beta = np.zeros(f + 1)
        penalty = self.l2 * np.eye(f + 1)
        penalty[0, 0] = 0.0
        bounded = np.zeros(f + 1, bool)
        bounded[1:m + 1] = self.nonneg
        current = self._binary_objective(x, y, m, beta, penalty)
        for _ in range(iterations):
            grad, hess = penalty @ beta, penalty.copy()
            for lo in range(0, len(x), BLOCK):
                z = np.column_stack([np.ones(len(x[lo:lo + BLOCK])),
                                     self._binary_features(x[lo:lo + BLOCK], m)])
                p = 1 / (1 + np.exp(-z @ beta))
                grad += z.T @ (p - y[lo:lo + BLOCK])
                hess += (z * (p * (1 - p))[:, None]).T @ z
            beta, current, moved = self._step(beta, grad, hess, bounded, current,
                                              lambda b: self._binary_objective(x, y, m, b,
                                                                               penalty))
            if not moved:
                break
        self.w["stacker-coef-0"], self.w["stacker-intercept-0"] = beta[1:], beta[:1]

    @staticmethod
    def _step(theta, grad, hess, bounded, current, objective):
        """A (projected) Newton step, halved until the objective decreases; (theta,
        objective, whether it moved)."""
        free = ~(bounded & (theta <= 0) & (grad > 0))
        step = np.zeros_like(theta)
        step[free] = np.linalg.lstsq(hess[np.ix_(free, free)], grad[free], rcond=None)[0]
        scale = 1.0
        for _ in range(30):
            candidate = theta - scale * step
            candidate[bounded] = np.maximum(candidate[bounded], 0.0)
            value = objective(candidate)
            if value <= current:
                moved = current - value > 1e-12 * (1 + abs(current))
                return candidate, value, moved
            scale /= 2
        return theta, current, False

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

    def _multiclass_objective(self, x, index, k, m, theta, penalty):
        total = 0.5 * theta @ penalty @ theta
        for lo in range(0, len(x), BLOCK):
            s = self._pool_scores(x[lo:lo + BLOCK], k, m, theta)
            top = s.max(axis=1)
            total += np.sum(top + np.log(np.exp(s - top[:, None]).sum(axis=1))
                            - s[np.arange(len(s)), index[lo:lo + BLOCK]])
        return total

    def _fit_multiclass(self, x, index, k, m, iterations):
        """Newton's method on the pooled multinomial, score_c = b_c + sum_m w_m log p_mc
        (+ raw features, a weight per class each), with a backtracking line search."""
        r = x.shape[1] - m * k
        n_par = m + k + r * k
        theta = np.zeros(n_par)
        theta[:m] = 1.0 / m  # start from the geometric mean of the models
        penalty = self.l2 * np.eye(n_par)
        penalty[m:m + k, m:m + k] = 0.0
        bounded = np.zeros(n_par, bool)
        bounded[:m] = self.nonneg
        eye = np.eye(k)
        current = self._multiclass_objective(x, index, k, m, theta, penalty)
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
            theta, current, moved = self._step(
                theta, grad, hess, bounded, current,
                lambda t: self._multiclass_objective(x, index, k, m, t, penalty))
            if not moved:
                break
        self.w["stacker-coef-0"], self.w["stacker-intercept-0"] = theta[:m], theta[m:m + k]
        self.w["stacker-raw-coef-0"] = theta[m + k:]

    def _fit_regression(self, x, y, m, sweeps: int = 2000):
        """Non-negative least squares with an intercept: coordinate descent on the centred
        normal equations (a ridge of l2 x 1e-4 of the columns' mean square keeps collinear
        models well posed, whatever the targets' scale)."""
        z = np.column_stack([np.asarray(x[:, :m], np.float64), self._raw(x, m)])
        mean = z.mean(0)
        zc = z - mean
        gram = zc.T @ zc
        gram += self.l2 * 1e-4 * max(np.mean(np.diag(gram)), 1e-12) * np.eye(z.shape[1])
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

    def fit_report(self):
        """The stacker's cross-validated loss on the level-one rows, and its choice."""
        return dict(self.report)

    def get_weights(self):
        return dict(self.w)

    def set_weights(self, w):
        self.w = dict(w)


def build(l2: float = 10.0, nonneg: bool = False, cv_folds: int = 5) -> Stacker:
    return Stacker(l2, nonneg, cv_folds)
