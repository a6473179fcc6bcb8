"""The shared part of the embedding-table kinds (knn, cluster): a sentence encoder, a table of
unit vectors (training queries, cluster centroids) and a per-expert quality row for each."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from router.encoder import DEFAULT_ENCODER, check_inference_options, embed
from router.kinds import Settings
from router.trained import RoutingModel, bundled_onnx


class EncoderSettings(Settings):
    """Settings of the kinds that embed queries with a sentence encoder."""

    encoder: str = Field(DEFAULT_ENCODER, description="A builtin: encoder, a hub id or a local folder.")
    backend: Literal["onnx", "torch"] = "onnx"
    quantize: Literal["int8"] | None = Field(None, description="int8 query embeddings (ONNX only).")

    @model_validator(mode="after")
    def _runs(self) -> EncoderSettings:
        check_inference_options(self.backend, self.quantize)
        return self


class EmbeddingRouter(RoutingModel):
    """Queries are embedded with the configured backend and quantization (int8 query embeddings
    against the stored fp32 vectors); the encoder is the artifact's own ONNX bundle if it has one."""

    weights_file: ClassVar[str]
    vectors_key: ClassVar[str]
    """Where the vectors are saved (``weights_file`` holds them under ``vectors_key`` and ``quality``)."""

    def __init__(
        self,
        experts: list[str],
        expected_costs: np.ndarray,
        config: EncoderSettings,
        vectors: np.ndarray,
        quality: np.ndarray,
        encoder: str | None = None,
    ):
        super().__init__(experts, expected_costs, config)
        self.encoder = encoder or config.encoder
        self.vectors = np.asarray(vectors, dtype=np.float32)
        self.quality = np.asarray(quality, dtype=np.float32)

    def similarities(self, texts: list[str]) -> np.ndarray:
        """(n, vectors) cosine similarities of the texts to the stored vectors."""
        cfg = self.config
        return embed(list(texts), self.encoder, cfg.backend, cfg.quantize) @ self.vectors.T

    def save_weights(self, folder: Path) -> None:
        vectors = {self.vectors_key: self.vectors.astype(np.float16)}
        np.savez_compressed(folder / self.weights_file, **vectors, quality=self.quality)

    @classmethod
    def encoder_source(cls, folder: Path, config: EncoderSettings) -> str:
        return config.encoder

    @classmethod
    def load_weights(
        cls, folder: Path, experts: list[str], expected_costs: np.ndarray, config: EncoderSettings
    ) -> EmbeddingRouter:
        data = np.load(folder / cls.weights_file)
        bundle = bundled_onnx(folder) if config.backend == "onnx" else None
        return cls(experts, expected_costs, config, data[cls.vectors_key], data["quality"], bundle)

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        quality: np.ndarray,
        experts: list[str],
        expected_costs: np.ndarray,
        config: EncoderSettings,
    ) -> EmbeddingRouter:
        """The router whose vectors are the embeddings of ``texts`` (fp32, the configured backend)."""
        return cls(
            experts, expected_costs, config, embed(list(texts), config.encoder, config.backend), quality
        )
