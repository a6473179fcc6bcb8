"""1NN-Router (the paper's baseline): embed the query, find the nearest training query, score experts
by how they did on it. ``k`` > 1 averages the k nearest, weighted by a softmax of their similarity
times ``sharpness`` (0: plain mean); ``knn_weighted`` is that variant with tuned settings."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from router.kinds import Kind, _embedding


class KNNSettings(_embedding.EncoderSettings):
    k: int = Field(1, ge=1, description="Nearest training queries averaged.")
    sharpness: float = Field(0.0, ge=0, description="Softmax weight of their similarity (0: plain mean).")


class KNNRouter(_embedding.EmbeddingRouter):
    """The index: the training queries' embeddings and their raw quality per expert."""

    kind = "knn"
    weights_file, vectors_key = "knn.npz", "embeddings"

    def scores(self, texts: list[str]) -> np.ndarray:
        sims = self.similarities(texts)
        k = min(self.config.k, len(self.vectors))
        nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        near = np.take_along_axis(sims, nearest, axis=1)
        weights = np.exp(self.config.sharpness * (near - near.max(axis=1, keepdims=True)))
        weights /= weights.sum(axis=1, keepdims=True)
        return np.einsum("nk,nkm->nm", weights, self.quality[nearest])


KIND = Kind("knn", KNNSettings, KNNRouter, KNNRouter.from_texts, "quality")
"""Fitting indexes the training queries (their raw quality per expert, not soft labels)."""
