"""Standardised logistic regression (scikit-learn), P(y = 1) per row."""

import numpy as np
from sklearn.linear_model import LogisticRegression


class LogReg:
    def __init__(self, C: float, max_iter: int) -> None:
        self.clf = LogisticRegression(C=C, max_iter=max_iter)
        self.mean = self.scale = None

    def fit(self, x, y):
        self.mean, self.scale = x.mean(0), x.std(0) + 1e-12
        self.clf.fit((x - self.mean) / self.scale, y)
        return self

    def predict(self, x):
        return self.clf.predict_proba((x - self.mean) / self.scale)[:, 1]

    def get_weights(self):
        return {"logreg-scaler-0": np.stack([self.mean, self.scale]),
                "logreg-coef-0": self.clf.coef_, "logreg-intercept-0": self.clf.intercept_,
                "logreg-classes-0": self.clf.classes_}

    def set_weights(self, w):
        self.mean, self.scale = w["logreg-scaler-0"]
        self.clf.coef_, self.clf.intercept_ = w["logreg-coef-0"], w["logreg-intercept-0"]
        self.clf.classes_ = w["logreg-classes-0"]


def build(C: float = 1.0, max_iter: int = 1000) -> LogReg:
    return LogReg(C, max_iter)
