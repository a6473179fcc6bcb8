"""Ensemble: the mean of several kinds' per-expert scores. Its members are kinds whose scores are
already in quality units (pointwise probabilities, the kNN / cluster mean quality), so averaging
needs no recalibration; a query is embedded once for all members. Members are trained with their
own defaults (or ``member_config``), each saved as a full artifact inside this one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from router import kinds
from router.encoder import embedding_cache
from router.kinds import Kind, _embedding
from router.trained import RoutingModel, bundled_onnx, load_model


class EnsembleSettings(_embedding.EncoderSettings):
    members: list[str] = Field(
        ["pointwise", "knn_weighted", "cluster"], min_length=1, description="Kinds scoring in quality units."
    )
    member_config: dict[str, dict[str, Any]] = Field(
        {}, description="Settings per member kind (encoder, backend and quantize are the ensemble's)."
    )

    @field_validator("members")
    @classmethod
    def _quality_units(cls, names: list[str]) -> list[str]:
        for name in names:
            if name == "ensemble" or kinds.load(name).targets != "quality":
                raise ValueError(f"ensemble members score in quality units; '{name}' does not")
        return names


GRID = {"members": [["pointwise", "knn_weighted"], ["pointwise", "knn_weighted", "cluster"]]}
MEMBERS_FOLDER = "members"
SHARED = ("encoder", "backend", "quantize")
"""Settings every member takes from the ensemble's (one encoder pass per query for all)."""


class EnsembleRouter(RoutingModel):
    """Scores = the mean of the members' scores (same experts, same order)."""

    kind = "ensemble"

    def __init__(
        self,
        experts: list[str],
        expected_costs: np.ndarray,
        config: EnsembleSettings,
        members: list[RoutingModel],
    ):
        super().__init__(experts, expected_costs, config)
        self.members = list(members)

    def scores(self, texts: list[str]) -> np.ndarray:
        return self.predict(texts)[0]

    def predict(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The mean of the members' scores and of their expected costs."""
        with embedding_cache():
            scores, costs = zip(*(member.predict(texts) for member in self.members))
        return np.mean(scores, axis=0), np.mean(costs, axis=0)

    def save_weights(self, folder: Path) -> None:
        for i, member in enumerate(self.members):
            member.save(folder / MEMBERS_FOLDER / f"{i}-{member.kind}")

    @classmethod
    def encoder_source(cls, folder: Path, config: EnsembleSettings) -> str:
        return config.encoder

    @classmethod
    def load_weights(
        cls, folder: Path, experts: list[str], expected_costs: np.ndarray, config: EnsembleSettings
    ) -> EnsembleRouter:
        overrides = {"backend": config.backend, "quantize": config.quantize}
        members = [load_model(path, overrides) for path in sorted((folder / MEMBERS_FOLDER).iterdir())]
        bundle = bundled_onnx(folder) if config.backend == "onnx" else None
        for member in members:
            if bundle and getattr(member, "encoder", None) is not None:
                member.encoder = bundle  # the ensemble's exported encoder serves every member
        return cls(experts, expected_costs, config, members)


def fit(
    texts: list[str],
    quality: np.ndarray,
    experts: list[str],
    costs: np.ndarray,
    config: EnsembleSettings,
) -> EnsembleRouter:
    """Each member fitted on the same queries, per-expert quality and costs."""
    shared = {k: getattr(config, k) for k in SHARED}
    members = []
    for name in config.members:
        member = kinds.load(name)
        settings = member.configure({**config.member_config.get(name, {}), **shared})
        members.append(member.fit(texts, quality, experts, costs, settings))
    return EnsembleRouter(experts, costs, config, members)


KIND = Kind("ensemble", EnsembleSettings, EnsembleRouter, fit, "quality", GRID)
