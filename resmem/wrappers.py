"""ResMem around any scikit-learn estimator: `ResMemClassifier` and `ResMemRegressor` fit a clone of the base
estimator, memorize its training residuals, and add the k nearest residuals' (weighted) mean to its predictions.
Both follow scikit-learn's protocol (get_params/set_params, clone, Pipeline, GridSearchCV, check_estimator).

    >>> from sklearn.linear_model import LogisticRegression
    >>> model = ResMemClassifier(LogisticRegression(), k=16, sigma=1.0).fit(X_train, y_train)
    >>> model.predict(X_test); model.predict_proba(X_test); model.score(X_test, y_test)

The classifier's arithmetic is `resmem.ResMem`'s (its scores, tie rule and selection); the regressor's neighbour
means are `resmem.core.kernel_prefix_means`, the same prefix sums the workflow's sweeps use.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, clone
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from resmem.checks import check_device, check_grid, check_positive_int, check_positive_number, check_temperature
from resmem.core import kernel_prefix_means
from resmem.estimator import ResMem
from resmem.knn import build_index, search

WEIGHTS = ("uniform", "softmax")
LOG_FLOOR = np.log(np.finfo(np.float64).tiny)  # log of a predicted probability of 0


def _base_logits(estimator, X) -> np.ndarray:
    """The base classifier's logits: decision_function (a binary one's margin f as the two logits 0 and f,
    whose softmax is (1 − sigmoid f, sigmoid f)), else log predict_proba."""
    if hasattr(estimator, "decision_function"):
        scores = np.asarray(estimator.decision_function(X), dtype=np.float64)
        return np.column_stack([np.zeros(len(scores)), scores]) if scores.ndim == 1 else scores
    if hasattr(estimator, "predict_proba"):
        with np.errstate(divide="ignore"):
            return np.maximum(np.log(estimator.predict_proba(X)), LOG_FLOOR)
    raise TypeError(f"estimator {type(estimator).__name__} has neither decision_function nor predict_proba; "
                    "ResMemClassifier needs the base model's class scores")  # fmt: skip


class _Memorizing(BaseEstimator):
    """What both wrappers share: the checked hyperparameters, the embedding step and the base estimator."""

    def _check_settings(self) -> str:
        check_positive_int(self.k, "k")
        check_positive_number(self.sigma, "sigma")
        return check_device(self.device)

    def _fit_base(self, X, y):
        self.estimator_ = clone(self.estimator).fit(X, y)
        self.embedding_ = None if self.embedding is None else clone(self.embedding).fit(X, y)
        return self._embed(X)

    def _embed(self, X) -> np.ndarray:
        return X if self.embedding_ is None else np.asarray(self.embedding_.transform(X), dtype=np.float64)

    def _checked_queries(self, X):
        check_is_fitted(self)
        return validate_data(self, X, reset=False)


class ResMemClassifier(ClassifierMixin, _Memorizing):
    """A classifier plus ResMem: softmax(z/T) of the base model's logits z plus the softmax(−d/σ)-weighted mean
    of the residuals onehot(y) − softmax(z/T) of the k nearest training examples, in the space of X or of
    `embedding`'s transform of it.

    Args:
        estimator: any classifier (fitted or not: a clone is fitted on X, y); its logits are its
            decision_function, or without one log predict_proba.
        k: neighbours per query (at most the number of training examples).
        sigma: σ > 0 of the neighbour weights softmax(−d/σ) over Euclidean distances d.
        temperature: T > 0 of the residuals and of the base model's softmax(z/T).
        normalize: L2-normalize the embeddings before the search (cosine neighbours).
        device: where faiss searches: "auto", "cpu", "cuda", "cuda:N" or a torch.device.
        embedding: None (neighbours in X itself) or a transformer, cloned and fitted on X, y, whose output is
            the embedding.

    Attributes after fit: estimator_, embedding_, memory_ (the fitted `resmem.ResMem`), classes_,
    n_features_in_.
    """

    def __init__(self, estimator: BaseEstimator, k: int = 16, sigma: float = 1.0, temperature: float = 1.0,
                 embedding: BaseEstimator | None = None, normalize: bool = False,
                 device: object = "auto") -> None:  # fmt: skip
        self.estimator, self.k, self.sigma, self.temperature = estimator, k, sigma, temperature
        self.embedding, self.normalize, self.device = embedding, normalize, device

    def fit(self, X: ArrayLike, y: ArrayLike) -> ResMemClassifier:
        """Fit the base estimator (a clone) and the embedding on X, y, then memorize the training residuals."""
        device = self._check_settings()
        check_temperature(self.temperature, "temperature")
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        embeddings = self._fit_base(X, y)
        self.classes_ = np.asarray(self.estimator_.classes_)
        self.memory_ = ResMem(
            k=self.k, sigma=self.sigma, temperature=self.temperature, normalize=self.normalize, device=device
        )
        self.memory_.fit(embeddings, _base_logits(self.estimator_, X), y, classes=self.classes_)
        return self

    def _memory_inputs(self, X) -> tuple[np.ndarray, np.ndarray]:
        X = self._checked_queries(X)
        self.memory_.set_params(k=self.k, sigma=self.sigma, temperature=self.temperature, device=self.device)
        return self._embed(X), _base_logits(self.estimator_, X)

    def predict(self, X: ArrayLike) -> np.ndarray:
        """The class of each row's best ResMem score (`resmem.ResMem.predict`)."""
        embeddings, logits = self._memory_inputs(X)
        return self.memory_.predict(embeddings, logits)

    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        """Class probabilities, columns in `classes_` order (`resmem.ResMem.predict_proba`)."""
        embeddings, logits = self._memory_inputs(X)
        return self.memory_.predict_proba(embeddings, logits)

    def select(
        self, X: ArrayLike, y: ArrayLike, k: ArrayLike, sigma: ArrayLike, temperature: ArrayLike
    ) -> pd.DataFrame:
        """Choose (k, σ, T) by accuracy on validation data X, y from one search (`resmem.ResMem.select`) and set
        them; returns one row per grid point."""
        X = self._checked_queries(X)
        grid = self.memory_.select(self._embed(X), _base_logits(self.estimator_, X), y, k, sigma, temperature)
        self.set_params(k=self.memory_.k, sigma=self.memory_.sigma, temperature=self.memory_.temperature)
        return grid


class ResMemRegressor(RegressorMixin, _Memorizing):
    """A regressor plus ResMem: the base prediction plus the mean of the k nearest training residuals
    y_i − base(x_i), uniform (`weights="uniform"`: the base plus scikit-learn's KNeighborsRegressor fitted on the
    residuals) or softmax(−d/σ)-weighted (`weights="softmax"`). y may have several outputs.

    Args:
        estimator: any regressor (a clone is fitted on X, y).
        k: neighbours per query (at most the number of training examples).
        weights: "uniform" (the plain mean) or "softmax" (weights softmax(−d/σ)).
        sigma: σ > 0 of the softmax weights.
        embedding: None (neighbours in X) or a transformer, cloned and fitted on X, y.
        normalize: L2-normalize the embeddings before the search.
        device: where faiss searches: "auto", "cpu", "cuda", "cuda:N" or a torch.device.

    Attributes after fit: estimator_, embedding_, index_ (the faiss index), residuals_ (N × outputs),
    n_features_in_.
    """

    def __init__(self, estimator: BaseEstimator, k: int = 16, weights: str = "uniform", sigma: float = 1.0,
                 embedding: BaseEstimator | None = None, normalize: bool = False,
                 device: object = "auto") -> None:  # fmt: skip
        self.estimator, self.k, self.weights, self.sigma = estimator, k, weights, sigma
        self.embedding, self.normalize, self.device = embedding, normalize, device

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True  # residuals of several outputs are memorized together
        return tags

    def _width(self) -> float:
        """The kernel width of the weights: σ, or ∞ for uniform weights (exp(−d/∞) = 1 for every neighbour)."""
        if self.weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {WEIGHTS}; got {self.weights!r}")
        return np.inf if self.weights == "uniform" else check_positive_number(self.sigma, "sigma")

    def fit(self, X: ArrayLike, y: ArrayLike) -> ResMemRegressor:
        """Fit the base estimator (a clone) and the embedding on X, y, then index the training residuals."""
        device = self._check_settings()
        self._width()
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True)
        embeddings = self._fit_base(X, y)
        residuals = np.asarray(y, dtype=np.float64) - np.asarray(self.estimator_.predict(X), dtype=np.float64)
        self.residuals_ = residuals.reshape(len(X), -1)
        self.outputs_ = None if np.ndim(y) == 1 else np.shape(y)[1]
        self.index_ = build_index(embeddings, normalize=bool(self.normalize), device=device)
        return self

    def _neighbour_means(self, X, ks, widths):
        """The base predictions of X and, for every k in `ks` and width in `widths`, the weighted residual means:
        (base N × outputs, {(k, width): N × outputs}), from one search at the largest k."""
        X = self._checked_queries(X)
        k_max, device = max(ks), self._check_settings()
        if k_max > self.index_.ntotal:
            raise ValueError(f"k = {k_max} exceeds the {self.index_.ntotal} training examples the model was fitted "
                             f"on; use k ≤ {self.index_.ntotal}")  # fmt: skip
        dist, idx = search(self.index_, self._embed(X), k_max, normalize=bool(self.normalize), device=device)
        base = np.asarray(self.estimator_.predict(X), dtype=np.float64).reshape(len(X), -1)
        means = {(k, w): np.empty_like(base) for k in ks for w in widths}
        for start, stop, i, mean in kernel_prefix_means(dist, idx, ks, widths, self.residuals_.__getitem__,
                                                        self.residuals_.shape[1]):  # fmt: skip
            for j, width in enumerate(widths):
                means[ks[i], width][start:stop] = mean[:, j]
        return base, means

    def _shaped(self, prediction: np.ndarray) -> np.ndarray:
        return prediction[:, 0] if self.outputs_ is None else prediction

    def predict(self, X: ArrayLike) -> np.ndarray:
        """base(X) + the weighted mean of the k nearest training residuals; shaped as y was."""
        k, width = check_positive_int(self.k, "k"), self._width()
        base, means = self._neighbour_means(X, [k], [width])
        return self._shaped(base + means[k, width])

    def select(self, X: ArrayLike, y: ArrayLike, k: ArrayLike, sigma: ArrayLike | None = None) -> pd.DataFrame:
        """Choose k (and σ, for softmax weights) by mean squared error on validation data X, y, from one search;
        ties go to the smaller k, then the larger σ. Sets them and returns one row per grid point (k, sigma,
        mse, selected)."""
        from resmem.sweep import best_point

        ks = check_grid(k, "k", check_positive_int)
        uniform = self._width() == np.inf
        if uniform and sigma is not None:
            raise ValueError("sigma is a grid of the softmax weights; with weights='uniform' leave it out")
        widths = [np.inf] if uniform else check_grid(sigma if sigma is not None else self.sigma, "sigma",
                                                     check_positive_number)  # fmt: skip
        base, means = self._neighbour_means(X, ks, widths)
        target = np.asarray(y, dtype=np.float64).reshape(base.shape)
        frame = pd.DataFrame([{"k": kk, "sigma": w, "mse": float(np.mean((base + means[kk, w] - target) ** 2))}
                              for kk in ks for w in widths])  # fmt: skip
        best = best_point(frame, ("k", "sigma"), "mse", higher_is_better=False)
        self.set_params(k=int(best["k"]), **({} if uniform else {"sigma": float(best["sigma"])}))
        frame["selected"] = frame.index == best.name
        return frame
