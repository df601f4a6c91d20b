"""ResMem on any model's outputs, without the workflow: fit on the training split's embeddings, logits and labels,
predict from a query's embedding and logits, select (k, σ, T) on a validation split, save and load.

    >>> model = ResMem(k=16, sigma=0.5).fit(train_emb, train_logits, train_y)
    >>> grid = model.select(val_emb, val_logits, val_y, k=[4, 16, 64], sigma=[0.3, 1.0], temperature=[1.0])
    >>> model.predict(test_emb, test_logits)          # at the selected point
    >>> model.save("model/"); ResMem.load("model/")   # no pickle: npz, a checked faiss index, JSON

The scores are those of `resmem.core` (float64, its tie rule); `select` counts the grid with the sweep engine
(`resmem.engine.sweep_correct`) and breaks ties as the workflow's selection does (`resmem.sweep.best_point`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator

from resmem.checks import (
    check_device,
    check_grid,
    check_labels,
    check_matrix,
    check_positive_int,
    check_positive_number,
    check_rows,
    check_temperature,
    encode_labels,
    to_numpy,
)
from resmem.core import predict as tie_rule
from resmem.core import resmem_scores, tie_tolerance
from resmem.knn import build_index, search

PREDICT_CHUNK_BYTES = 64 * 2**20  # the neighbours' residuals gathered for one chunk of queries (k × C float64 each)
GRID_PARAMETERS = ("k", "sigma", "temperature")  # select's columns, in the order its ties are broken


class ResMem(BaseEstimator):
    """ResMem (arXiv 2302.01576) over a trained model's outputs: the base model's class probabilities
    softmax(z/T) plus the kernel-weighted mean of the residuals onehot(y) − softmax(z/T) of the query's k nearest
    training examples in embedding space.

    Args:
        k: neighbours per query (a positive integer, at most the number of training examples).
        sigma: σ > 0 of the neighbour weights softmax(−d/σ) over Euclidean distances d.
        temperature: T > 0 of the residuals and of the query's softmax(z′/T).
        normalize: L2-normalize the embeddings before the search (cosine neighbours).
        device: where faiss searches and `select` sweeps: "auto" (a GPU when one is visible), "cpu", "cuda",
            "cuda:N" or a torch.device.

    Attributes after `fit`: classes_ (the class of each logit column, sorted), n_features_in_ (the embedding
    width), index_ (the faiss index, on the CPU), train_logits_ and train_codes_ (copies of the training logits
    and of the labels as column numbers).

    Inputs may be numpy arrays, lists or torch tensors (any device and dtype; detached and copied). Queries are
    scored in chunks: beyond the Q × C result and one search's Q × k neighbours (12 bytes each), the working
    memory stays within a few times PREDICT_CHUNK_BYTES (64 MiB), whatever the number of queries.
    """

    def __init__(self, k: int = 16, sigma: float = 1.0, temperature: float = 1.0, normalize: bool = False,
                 device: object = "auto") -> None:  # fmt: skip
        self.k, self.sigma, self.temperature = k, sigma, temperature
        self.normalize, self.device = normalize, device

    def _settings(self) -> tuple[int, float, float, str]:
        """The hyperparameters, checked: (k, σ, T, device)."""
        return (check_positive_int(self.k, "k"), check_positive_number(self.sigma, "sigma"),
                check_temperature(self.temperature, "temperature"), check_device(self.device))  # fmt: skip

    def fit(
        self, embeddings: ArrayLike, logits: ArrayLike, labels: ArrayLike, classes: ArrayLike | None = None
    ) -> ResMem:
        """Memorize the training split: embeddings (N × d), the base model's logits (N × C) and labels (N,).

        Column c of the logits scores class `classes_[c]`: the sorted distinct labels, or `classes` (all C of
        them) where a class is missing from the training labels."""
        _, _, _, device = self._settings()
        embeddings = check_matrix(embeddings, "embeddings")
        logits = check_matrix(logits, "logits", what="classes")
        check_rows("logits", len(embeddings), len(logits), "embeddings")
        labels = check_labels(labels, "labels", len(embeddings))
        if classes is None:
            found = np.unique(labels)
        else:
            given = to_numpy(classes, "classes")
            found = np.unique(check_labels(given, "classes", len(given)))
            if len(found) != len(given):
                raise ValueError(f"classes repeats a value: {given.tolist()}")
        if len(found) != logits.shape[1] or len(found) < 2:
            source = "the labels hold" if classes is None else "classes holds"
            raise ValueError(f"{source} {len(found)} distinct classes but the logits have {logits.shape[1]} "
                             "columns (at least 2): column c must score the c-th class in sorted order; where a "
                             "class is missing from the training labels, pass classes= with all of them")  # fmt: skip
        self.train_codes_ = encode_labels(labels, found, "labels")
        self.classes_ = found
        self.index_ = build_index(embeddings, normalize=bool(self.normalize), device=device)
        self.train_logits_ = np.array(logits, copy=True)
        self.n_features_in_ = embeddings.shape[1]
        return self

    def _queries(self, embeddings, logits) -> tuple[np.ndarray, np.ndarray]:
        if not hasattr(self, "index_"):
            raise AttributeError(f"this {type(self).__name__} is not fitted yet; call fit(embeddings, logits, "
                                 "labels) first")  # fmt: skip
        embeddings = check_matrix(embeddings, "embeddings", columns=self.n_features_in_)
        logits = check_matrix(logits, "logits", columns=len(self.classes_), what="classes")
        check_rows("logits", len(embeddings), len(logits), "embeddings")
        return embeddings, logits

    def _neighbours(self, embeddings, k: int, device: str) -> tuple[np.ndarray, np.ndarray]:
        if k > self.index_.ntotal:
            raise ValueError(f"k = {k} exceeds the {self.index_.ntotal} training examples the model was fitted "
                             f"on; use k ≤ {self.index_.ntotal}")  # fmt: skip
        return search(self.index_, embeddings, k, normalize=bool(self.normalize), device=device)

    def _score_chunks(self, embeddings, logits):
        """Yields (rows, scores) for consecutive chunks of queries: ResMem's Q_chunk × C float64 scores."""
        k, sigma, temperature, device = self._settings()
        embeddings, logits = self._queries(embeddings, logits)
        dist, idx = self._neighbours(embeddings, k, device)
        rows = max(1, PREDICT_CHUNK_BYTES // (k * len(self.classes_) * 8))
        for start in range(0, len(logits), rows):
            here = slice(start, start + rows)
            yield here, resmem_scores(logits[here], dist[here], idx[here], self.train_logits_, self.train_codes_,
                                      sigma, temperature)  # fmt: skip

    def decision_function(self, embeddings: ArrayLike, logits: ArrayLike) -> np.ndarray:
        """ResMem's raw scores, Q × C float64: softmax(z′/T) + Σ_j w_j r_j over the k nearest training examples,
        w_j = softmax(−d_j/σ). Each row sums to 1; an entry may be negative (a residual is)."""
        return np.concatenate([scores for _, scores in self._score_chunks(embeddings, logits)])

    def predict(self, embeddings: ArrayLike, logits: ArrayLike) -> np.ndarray:
        """The class (from `classes_`) of each query's best score; ties within `resmem.core.tie_tolerance`: the
        class that sorts first."""
        k = check_positive_int(self.k, "k")
        codes = [tie_rule(s, tie_tolerance(k, s.shape[1])) for _, s in self._score_chunks(embeddings, logits)]
        return self.classes_[np.concatenate(codes)]

    def predict_proba(self, embeddings: ArrayLike, logits: ArrayLike) -> np.ndarray:
        """Class probabilities, Q × C, columns in `classes_` order: the scores of `decision_function` with their
        negative entries set to 0, renormalized to sum to 1. The scores already sum to 1 and their largest entry
        is at least 1/C, so every row is a distribution whose most probable class is `predict`'s."""
        scores = self.decision_function(embeddings, logits)
        np.maximum(scores, 0.0, out=scores)
        scores /= scores.sum(axis=1, keepdims=True)
        return scores

    def score(self, embeddings: ArrayLike, logits: ArrayLike, labels: ArrayLike) -> float:
        """Accuracy of `predict` on labelled queries (a label outside `classes_` counts as wrong)."""
        predicted = self.predict(embeddings, logits)
        labels = check_labels(labels, "labels", len(predicted))
        return float(np.mean(predicted == labels))

    def select(self, embeddings: ArrayLike, logits: ArrayLike, labels: ArrayLike, k: ArrayLike, sigma: ArrayLike,
               temperature: ArrayLike) -> pd.DataFrame:  # fmt: skip
        """Choose (k, σ, T) on a validation split (queries that are not training examples) by accuracy, from
        one search at the largest k, and set the model's k, sigma and temperature to the chosen point. Ties go
        to the smaller k, then the larger σ, then the smaller T, as in the workflow's selection.

        Returns one row per grid point with columns k, sigma, temperature and accuracy (val accuracy), and
        `selected` (True at the chosen point)."""
        from resmem.engine import sweep_correct
        from resmem.sweep import best_point

        ks = check_grid(k, "k", check_positive_int)
        sigmas = check_grid(sigma, "sigma", check_positive_number)
        temperatures = check_grid(temperature, "temperature", check_temperature)
        device = check_device(self.device)
        embeddings, logits = self._queries(embeddings, logits)
        codes = encode_labels(check_labels(labels, "labels", len(logits)), self.classes_, "labels")
        dist, idx = self._neighbours(embeddings, max(ks), device)
        correct = sweep_correct(self.train_logits_, self.train_codes_, logits, codes, dist, idx, ks, sigmas,
                                temperatures, device=device)["resmem"]  # fmt: skip
        frame = pd.DataFrame(
            [{"k": kk, "sigma": s, "temperature": t, "accuracy": correct[a, b, c] / len(codes)}
             for a, t in enumerate(temperatures) for b, kk in enumerate(ks) for c, s in enumerate(sigmas)]
        )  # fmt: skip
        best = best_point(frame, GRID_PARAMETERS)
        self.set_params(k=int(best["k"]), sigma=float(best["sigma"]), temperature=float(best["temperature"]))
        frame["selected"] = frame.index == best.name
        return frame

    def save(self, path: str | Path) -> None:
        """Write the fitted model to the folder `path` (see `resmem.model_files`): no pickle, every part's
        sha256 recorded."""
        from resmem.model_files import save_model

        save_model(self, path)

    @classmethod
    def load(cls, path: str | Path) -> ResMem:
        """A model `save` wrote, each part checked against its recorded sha256 before it is parsed."""
        from resmem.model_files import load_model

        return load_model(cls, path)
