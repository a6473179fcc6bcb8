"""The shared part of the embedding-table kinds (knn, cluster): a sentence encoder, a table of
unit vectors (training queries, cluster centroids) and a per-expert quality row for each."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from router.encoder import DEFAULT_ENCODER, embed
from router.trained import TrainedRouter, bundled_onnx

DEFAULTS = {"encoder": DEFAULT_ENCODER, "backend": "onnx", "quantize": None}


class EmbeddingRouter(TrainedRouter):
    """Queries are embedded with the configured backend and quantization (int8 query embeddings
    against the stored fp32 vectors); the encoder is the artifact's own ONNX bundle if it has one."""

    defaults: ClassVar[dict[str, Any]] = DEFAULTS
    weights_file: ClassVar[str]
    vectors_key: ClassVar[str]
    """Where the vectors are saved (``weights_file`` holds them under ``vectors_key`` and ``quality``)."""

    def __init__(
        self,
        experts: list[str],
        expected_costs: np.ndarray,
        config: dict[str, Any],
        vectors: np.ndarray,
        quality: np.ndarray,
        encoder: str | None = None,
    ):
        super().__init__(experts, expected_costs, {**self.defaults, **config})
        self.encoder = encoder or self.config["encoder"]
        self.vectors = np.asarray(vectors, dtype=np.float32)
        self.quality = np.asarray(quality, dtype=np.float32)

    def similarities(self, texts: list[str]) -> np.ndarray:
        """(n, vectors) cosine similarities of the texts to the stored vectors."""
        cfg = self.config
        return embed(list(texts), self.encoder, cfg["backend"], cfg["quantize"]) @ self.vectors.T

    def save_weights(self, folder: Path) -> None:
        vectors = {self.vectors_key: self.vectors.astype(np.float16)}
        np.savez_compressed(folder / self.weights_file, **vectors, quality=self.quality)

    @classmethod
    def encoder_source(cls, folder: Path, config: dict[str, Any]) -> str:
        return config.get("encoder", cls.defaults["encoder"])

    @classmethod
    def load_weights(
        cls, folder: Path, experts: list[str], expected_costs: np.ndarray, config: dict
    ) -> EmbeddingRouter:
        data = np.load(folder / cls.weights_file)
        config = {**cls.defaults, **config}
        bundle = bundled_onnx(folder) if config["backend"] == "onnx" else None
        return cls(experts, expected_costs, config, data[cls.vectors_key], data["quality"], bundle)

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        quality: np.ndarray,
        experts: list[str],
        expected_costs: np.ndarray,
        config: dict[str, Any],
    ) -> EmbeddingRouter:
        """The router whose vectors are the embeddings of ``texts`` (fp32, the configured backend)."""
        config = {**cls.defaults, **config}
        return cls(
            experts, expected_costs, config, embed(list(texts), config["encoder"], config["backend"]), quality
        )
