"""1NN-Router: embed the query, find the nearest training query, score experts by how they did on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from router.encoder import DEFAULT_ENCODER, embed
from router.trained import TrainedRouter

DEFAULTS = {"encoder": DEFAULT_ENCODER, "k": 1}


class KNNRouter(TrainedRouter):
    kind = "knn"

    def __init__(
        self,
        experts: list[str],
        expected_costs: np.ndarray,
        config: dict[str, Any],
        embeddings: np.ndarray,
        quality: np.ndarray,
    ):
        super().__init__(experts, expected_costs, config)
        self.embeddings = np.asarray(embeddings, dtype=np.float32)
        self.quality = np.asarray(quality, dtype=np.float32)

    def scores(self, texts: list[str]) -> np.ndarray:
        sims = embed(list(texts), self.config["encoder"]) @ self.embeddings.T
        k = min(self.config["k"], len(self.embeddings))
        nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        return self.quality[nearest].mean(axis=1)

    def save_weights(self, folder: Path) -> None:
        np.savez_compressed(
            folder / "knn.npz", embeddings=self.embeddings.astype(np.float16), quality=self.quality
        )

    @classmethod
    def load_weights(
        cls, folder: Path, experts: list[str], expected_costs: np.ndarray, config: dict
    ) -> KNNRouter:
        data = np.load(folder / "knn.npz")
        return cls(experts, expected_costs, config, data["embeddings"], data["quality"])


def fit(
    texts: list[str],
    quality: np.ndarray,
    experts: list[str],
    expected_costs: np.ndarray,
    config: dict[str, Any],
) -> KNNRouter:
    """Index the training queries (their raw quality per expert, not soft labels)."""
    config = {**DEFAULTS, **config}
    return KNNRouter(experts, expected_costs, config, embed(list(texts), config["encoder"]), quality)
