"""Gaussian naive Bayes (scikit-learn), P(y = 1) per row."""

from sklearn.naive_bayes import GaussianNB


class NaiveBayes:
    def __init__(self, var_smoothing: float) -> None:
        self.clf = GaussianNB(var_smoothing=var_smoothing)

    def fit(self, x, y):
        self.clf.fit(x, y)
        return self

    def predict(self, x):
        return self.clf.predict_proba(x)[:, 1]

    def get_weights(self):
        c = self.clf
        return {"gnb-theta-0": c.theta_, "gnb-var-0": c.var_, "gnb-prior-0": c.class_prior_,
                "gnb-classes-0": c.classes_}

    def set_weights(self, w):
        c = self.clf
        c.theta_, c.var_ = w["gnb-theta-0"], w["gnb-var-0"]
        c.class_prior_, c.classes_ = w["gnb-prior-0"], w["gnb-classes-0"]


def build(var_smoothing: float = 1e-9) -> NaiveBayes:
    return NaiveBayes(var_smoothing)
