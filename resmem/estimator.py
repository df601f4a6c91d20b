"""ResMem as an estimator on any model's outputs, without the workflow."""

from __future__ import annotations

import numpy as np

from resmem.core import predict, resmem_scores, tie_tolerance
from resmem.knn import build_index, search


class ResMem:
    """Fit on the training split's embeddings, logits and labels; predict from a query's embedding and logits.

    Args:
        temperature: T of the residuals onehot(y) − softmax(z/T) and of the query's softmax(z′/T).
        normalize: L2-normalize the embeddings before the search (cosine neighbours).
        device: where faiss searches: "auto" (a GPU when one is visible), "cpu" or "cuda".

    >>> model = ResMem(temperature=1.0).fit(train_emb, train_logits, train_y)
    >>> pred = model.predict(test_emb, test_logits, k=16, sigma=0.5)
    """

    def __init__(self, temperature: float = 1.0, normalize: bool = False, device: str = "auto"):
        self.temperature, self.normalize, self.device = temperature, normalize, device

    def fit(self, embeddings: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> ResMem:
        """Index the training embeddings (N×d, exact L2 search) and keep their logits (N×C) and labels (N,)."""
        if not len(embeddings) == len(logits) == len(labels):
            raise ValueError(
                f"embeddings, logits and labels differ in length: {len(embeddings)}, {len(logits)}, {len(labels)}"
            )
        self.index_ = build_index(embeddings, normalize=self.normalize, device=self.device)
        self.logits_, self.labels_ = np.asarray(logits), np.asarray(labels)
        return self

    def scores(self, embeddings: np.ndarray, logits: np.ndarray, k: int, sigma: float) -> np.ndarray:
        """Q×C float64 scores softmax(z′/T) + Σ_j w_j r_j over each query's k nearest training examples, with
        w_j = softmax(−d_j/σ) over their Euclidean distances."""
        dist, idx = search(self.index_, embeddings, k, normalize=self.normalize, device=self.device)
        return resmem_scores(logits, dist, idx, self.logits_, self.labels_, sigma, self.temperature)

    def predict(self, embeddings: np.ndarray, logits: np.ndarray, k: int, sigma: float) -> np.ndarray:
        """The class of the best score; ties (within `resmem.core.tie_tolerance`): the lowest class."""
        return predict(self.scores(embeddings, logits, k, sigma), tie_tolerance(k, np.shape(logits)[1]))
