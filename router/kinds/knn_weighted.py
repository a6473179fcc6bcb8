"""kNN-Router with k > 1: the k nearest training queries, weighted by a softmax of their similarity
to the query; k and the weighting are chosen by nested cross-validation (``GRID``)."""

from __future__ import annotations

from router.kinds import knn

DEFAULTS = {**knn.DEFAULTS, "k": 30, "sharpness": 0.0}
GRID = {"k": [10, 30, 100, 300], "sharpness": [0.0, 20.0]}


class WeightedKNNRouter(knn.KNNRouter):
    kind = "knn_weighted"
    defaults = DEFAULTS


fit = WeightedKNNRouter.from_texts

ROUTER, TARGETS = WeightedKNNRouter, "quality"
