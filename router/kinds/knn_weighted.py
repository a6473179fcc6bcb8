"""kNN-Router with k > 1: the k nearest training queries, weighted by a softmax of their similarity
to the query; k and the weighting are chosen by nested cross-validation (``GRID``)."""

from __future__ import annotations

from pydantic import Field

from router.kinds import Kind, knn


class WeightedKNNSettings(knn.KNNSettings):
    k: int = Field(30, ge=1, description="Nearest training queries averaged.")


class WeightedKNNRouter(knn.KNNRouter):
    kind = "knn_weighted"


GRID = {"k": [10, 30, 100, 300], "sharpness": [0.0, 20.0]}
KIND = Kind(
    "knn_weighted", WeightedKNNSettings, WeightedKNNRouter, WeightedKNNRouter.from_texts, "quality", GRID
)
