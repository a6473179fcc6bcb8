"""Cluster-Router: k-means over the training queries' embeddings; per cluster, each expert's mean
quality and mean cost (after Avengers-Pro). A query is scored by its nearest clusters, weighted by a
softmax of its similarity to their centroids, and so is its expected cost per expert: the cost knob
trades quality against what each expert costs on queries like this one (long answers cost more).
One encoder pass plus a (1 x clusters) product per decision."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from router.encoder import embed
from router.kinds import Kind, _embedding


class ClusterSettings(_embedding.EncoderSettings):
    clusters: int = Field(16, ge=1, description="k-means clusters (at most one per training query).")
    nearest: int = Field(3, ge=1, description="Nearest clusters a query mixes.")
    sharpness: float = Field(20.0, ge=0, description="Softmax weight of its similarity to their centroids.")
    seed: int = 0


GRID = {"clusters": [8, 16, 32, 64], "nearest": [1, 3]}
"""Hyper-parameters nested cross-validation chooses among."""
SHRINK = 5.0
"""Pseudo-queries of the overall mean each cluster's means are shrunk towards (small clusters)."""


class ClusterRouter(_embedding.EmbeddingRouter):
    """The vectors are the cluster centroids; ``quality`` and ``cost`` are (clusters, experts)
    (``cost`` None for artifacts saved before it existed: the per-expert expected costs)."""

    kind = "cluster"
    weights_file, vectors_key = "clusters.npz", "centroids"

    def __init__(self, *args: Any, cost: np.ndarray | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.cost = None if cost is None else np.asarray(cost, dtype=np.float32)

    def scores(self, texts: list[str]) -> np.ndarray:
        return self.assignment(self.similarities(texts)) @ self.quality

    def predict(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if self.cost is None:
            return super().predict(texts)
        weights = self.assignment(self.similarities(texts))
        return weights @ self.quality, weights @ self.cost

    def assignment(self, sims: np.ndarray) -> np.ndarray:
        """(n, clusters) weights from query-centroid cosine similarities: a softmax over the
        ``nearest`` clusters."""
        nearest = min(self.config.nearest, sims.shape[1])
        cut = -np.partition(-sims, nearest - 1, axis=1)[:, nearest - 1 : nearest]
        logits = np.where(sims >= cut, self.config.sharpness * sims, -np.inf)
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))
        return weights / weights.sum(axis=1, keepdims=True)

    def save_weights(self, folder: Path) -> None:
        super().save_weights(folder)
        if self.cost is not None:
            np.savez_compressed(folder / "cluster_cost.npz", cost=self.cost)

    @classmethod
    def load_weights(
        cls, folder: Path, experts: list[str], expected_costs: np.ndarray, config: ClusterSettings
    ) -> ClusterRouter:
        router = super().load_weights(folder, experts, expected_costs, config)
        if (folder / "cluster_cost.npz").exists():
            router.cost = np.load(folder / "cluster_cost.npz")["cost"]
        return router


def _shrunk_means(values: np.ndarray, labels: np.ndarray, n_clusters: int) -> np.ndarray:
    """(clusters, experts) per-cluster means of ``values`` (n, experts), shrunk towards the overall
    mean by :data:`SHRINK` pseudo-queries; unknown (NaN) values are left out."""
    known = np.isfinite(values)
    filled = np.where(known, values, 0.0)
    prior = filled.sum(axis=0) / np.maximum(known.sum(axis=0), 1)
    means = []
    for c in range(n_clusters):
        rows = labels == c
        means.append((filled[rows].sum(axis=0) + SHRINK * prior) / (known[rows].sum(axis=0) + SHRINK))
    return np.stack(means)


def fit(
    texts: list[str],
    quality: np.ndarray,
    experts: list[str],
    costs: np.ndarray,
    config: ClusterSettings,
) -> ClusterRouter:
    """k-means (cosine: on unit vectors, centroids re-normalised); each cluster's mean quality per
    expert and, given the training queries' (n, m) costs, mean cost per expert."""
    from sklearn.cluster import KMeans

    vectors = embed(list(texts), config.encoder, config.backend)
    n_clusters = max(1, min(config.clusters, len(vectors)))
    labels = KMeans(n_clusters, n_init=3, random_state=config.seed).fit_predict(vectors)
    centroids = np.stack([vectors[labels == c].mean(axis=0) for c in range(n_clusters)])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True) + 1e-12
    costs = np.asarray(costs, dtype=float)
    cost = _shrunk_means(costs, labels, n_clusters) if costs.ndim == 2 else None
    per_cluster = _shrunk_means(np.asarray(quality, dtype=float), labels, n_clusters)
    return ClusterRouter(experts, costs, config, centroids, per_cluster, cost=cost)


KIND = Kind("cluster", ClusterSettings, ClusterRouter, fit, "quality", GRID)
