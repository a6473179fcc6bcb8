"""Cluster-Router: k-means over the training queries' embeddings; per cluster, each expert's mean
quality (after Avengers-Pro). A query is scored by its nearest clusters, weighted by a softmax of
its similarity to their centroids: one encoder pass plus a (1 x clusters) product per decision."""

from __future__ import annotations

from typing import Any

import numpy as np

from router.encoder import embed
from router.kinds import _embedding

DEFAULTS = {**_embedding.DEFAULTS, "clusters": 16, "nearest": 3, "sharpness": 20.0, "seed": 0}
GRID = {"clusters": [8, 16, 32, 64], "nearest": [1, 3]}
"""Hyper-parameters nested cross-validation chooses among."""


class ClusterRouter(_embedding.EmbeddingRouter):
    """The vectors are the cluster centroids; ``quality`` is (clusters, experts)."""

    kind = "cluster"
    defaults = DEFAULTS
    weights_file, vectors_key = "clusters.npz", "centroids"

    def scores(self, texts: list[str]) -> np.ndarray:
        return self.scores_from_similarities(self.similarities(texts))

    def scores_from_similarities(self, sims: np.ndarray) -> np.ndarray:
        """Scores from (n, clusters) query-centroid cosine similarities."""
        nearest = min(self.config["nearest"], sims.shape[1])
        cut = -np.partition(-sims, nearest - 1, axis=1)[:, nearest - 1 : nearest]
        logits = np.where(sims >= cut, self.config["sharpness"] * sims, -np.inf)
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (weights / weights.sum(axis=1, keepdims=True)) @ self.quality


def fit(
    texts: list[str],
    quality: np.ndarray,
    experts: list[str],
    expected_costs: np.ndarray,
    config: dict[str, Any],
) -> ClusterRouter:
    """k-means (cosine: on unit vectors, centroids re-normalised) and each cluster's mean quality per
    expert, shrunk towards the overall mean for small clusters."""
    from sklearn.cluster import KMeans

    config = {**DEFAULTS, **config}
    vectors = embed(list(texts), config["encoder"], config["backend"])
    n_clusters = max(1, min(config["clusters"], len(vectors)))
    labels = KMeans(n_clusters, n_init=3, random_state=config["seed"]).fit_predict(vectors)
    centroids = np.stack([vectors[labels == c].mean(axis=0) for c in range(n_clusters)])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True) + 1e-12
    prior, strength = quality.mean(axis=0), 5.0
    per_cluster = np.stack(
        [
            (quality[labels == c].sum(axis=0) + strength * prior) / ((labels == c).sum() + strength)
            for c in range(n_clusters)
        ]
    )
    return ClusterRouter(experts, expected_costs, config, centroids, per_cluster)


ROUTER, TARGETS = ClusterRouter, "quality"
