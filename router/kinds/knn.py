"""1NN-Router (the paper's baseline): embed the query, find the nearest training query, score experts
by how they did on it. ``k`` > 1 averages the k nearest, weighted by a softmax of their similarity
times ``sharpness`` (0: plain mean); ``knn_weighted`` is that variant with tuned settings."""

from __future__ import annotations

import numpy as np

from router.kinds import _embedding

DEFAULTS = {**_embedding.DEFAULTS, "k": 1, "sharpness": 0.0}


class KNNRouter(_embedding.EmbeddingRouter):
    """The index: the training queries' embeddings and their raw quality per expert."""

    kind = "knn"
    defaults = DEFAULTS
    weights_file, vectors_key = "knn.npz", "embeddings"

    def scores(self, texts: list[str]) -> np.ndarray:
        sims = self.similarities(texts)
        k = min(self.config["k"], len(self.vectors))
        nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        near = np.take_along_axis(sims, nearest, axis=1)
        weights = np.exp(self.config["sharpness"] * (near - near.max(axis=1, keepdims=True)))
        weights /= weights.sum(axis=1, keepdims=True)
        return np.einsum("nk,nkm->nm", weights, self.quality[nearest])


fit = KNNRouter.from_texts
"""Index the training queries (their raw quality per expert, not soft labels)."""

ROUTER, TARGETS = KNNRouter, "quality"
