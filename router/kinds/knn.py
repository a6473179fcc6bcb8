"""1NN-Router (the paper's baseline): embed the query, find the nearest training query, score experts
by how they did on it. ``k`` > 1 averages the k nearest, weighted by a softmax of their similarity
times ``sharpness`` (0: plain mean); ``knn_weighted`` is that variant with tuned settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from router.encoder import DEFAULT_ENCODER, embed
from router.trained import TrainedRouter, bundled_onnx

DEFAULTS = {"encoder": DEFAULT_ENCODER, "k": 1, "sharpness": 0.0, "backend": "onnx", "quantize": None}


class KNNRouter(TrainedRouter):
    """The index holds fp32 embeddings; queries are embedded with the configured backend and
    quantization (int8 query embeddings against the fp32 index)."""

    kind = "knn"

    def __init__(
        self,
        experts: list[str],
        expected_costs: np.ndarray,
        config: dict[str, Any],
        embeddings: np.ndarray,
        quality: np.ndarray,
        encoder: str | None = None,
    ):
        super().__init__(experts, expected_costs, {**DEFAULTS, **config})
        self.encoder = encoder or self.config["encoder"]  # or the artifact's own ONNX bundle
        self.embeddings = np.asarray(embeddings, dtype=np.float32)
        self.quality = np.asarray(quality, dtype=np.float32)

    def scores(self, texts: list[str]) -> np.ndarray:
        cfg = self.config
        sims = embed(list(texts), self.encoder, cfg["backend"], cfg["quantize"]) @ self.embeddings.T
        k = min(cfg["k"], len(self.embeddings))
        nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        near = np.take_along_axis(sims, nearest, axis=1)
        weights = np.exp(cfg["sharpness"] * (near - near.max(axis=1, keepdims=True)))
        weights /= weights.sum(axis=1, keepdims=True)
        return np.einsum("nk,nkm->nm", weights, self.quality[nearest])

    def save_weights(self, folder: Path) -> None:
        np.savez_compressed(
            folder / "knn.npz", embeddings=self.embeddings.astype(np.float16), quality=self.quality
        )

    @classmethod
    def encoder_source(cls, folder: Path, config: dict[str, Any]) -> str:
        return config.get("encoder", DEFAULTS["encoder"])

    @classmethod
    def load_weights(
        cls, folder: Path, experts: list[str], expected_costs: np.ndarray, config: dict
    ) -> KNNRouter:
        data = np.load(folder / "knn.npz")
        config = {**DEFAULTS, **config}
        bundle = bundled_onnx(folder) if config["backend"] == "onnx" else None
        return cls(experts, expected_costs, config, data["embeddings"], data["quality"], bundle)


def fit(
    texts: list[str],
    quality: np.ndarray,
    experts: list[str],
    expected_costs: np.ndarray,
    config: dict[str, Any],
) -> KNNRouter:
    """Index the training queries (their raw quality per expert, not soft labels)."""
    return index(KNNRouter, texts, quality, experts, expected_costs, {**DEFAULTS, **config})


def index(
    router_class: type[KNNRouter],
    texts: list[str],
    quality: np.ndarray,
    experts: list[str],
    expected_costs: np.ndarray,
    config: dict[str, Any],
) -> KNNRouter:
    vectors = embed(list(texts), config["encoder"], config["backend"])
    return router_class(experts, expected_costs, config, vectors, quality)


ROUTER, TARGETS = KNNRouter, "quality"
