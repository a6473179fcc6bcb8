"""Ensemble: the mean of several kinds' per-expert scores. Its members are kinds whose scores are
already in quality units (pointwise probabilities, the kNN / cluster mean quality), so averaging
needs no recalibration; a query is embedded once for all members. Members are trained with their
own defaults (or ``member_config``), each saved as a full artifact inside this one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from router import kinds
from router.encoder import DEFAULT_ENCODER, embedding_cache
from router.trained import TrainedRouter, bundled_onnx, load_router

DEFAULTS: dict[str, Any] = {
    "members": ["pointwise", "knn_weighted", "cluster"],
    "member_config": {},
    "encoder": DEFAULT_ENCODER,
    "backend": "onnx",
    "quantize": None,
}
GRID = {"members": [["pointwise", "knn_weighted"], ["pointwise", "knn_weighted", "cluster"]]}
MEMBERS_FOLDER = "members"
SHARED = ("encoder", "backend", "quantize")
"""Settings every member takes from the ensemble's (one encoder pass per query for all)."""


def _check_members(names: list[str]) -> None:
    for name in names:
        module = kinds.load(name)
        if name == "ensemble" or module.TARGETS != "quality":
            raise ValueError(f"ensemble members score in quality units; '{name}' does not")


class EnsembleRouter(TrainedRouter):
    """Scores = the mean of the members' scores (same experts, same order)."""

    kind = "ensemble"

    def __init__(
        self,
        experts: list[str],
        expected_costs: np.ndarray,
        config: dict[str, Any],
        members: list[TrainedRouter],
    ):
        super().__init__(experts, expected_costs, {**DEFAULTS, **config})
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
    def encoder_source(cls, folder: Path, config: dict[str, Any]) -> str:
        return config.get("encoder", DEFAULT_ENCODER)

    @classmethod
    def load_weights(
        cls, folder: Path, experts: list[str], expected_costs: np.ndarray, config: dict
    ) -> EnsembleRouter:
        config = {**DEFAULTS, **config}
        overrides = {k: config[k] for k in ("backend", "quantize")}
        members = [load_router(path, overrides) for path in sorted((folder / MEMBERS_FOLDER).iterdir())]
        bundle = bundled_onnx(folder) if config["backend"] == "onnx" else None
        for member in members:
            if bundle and getattr(member, "encoder", None) is not None:
                member.encoder = bundle  # the ensemble's exported encoder serves every member
        return cls(experts, expected_costs, config, members)


def fit(
    texts: list[str],
    quality: np.ndarray,
    experts: list[str],
    costs: np.ndarray,
    config: dict[str, Any],
) -> EnsembleRouter:
    """Each member fitted on the same queries, per-expert quality and costs."""
    config = {**DEFAULTS, **config}
    _check_members(config["members"])
    shared = {k: config[k] for k in SHARED}
    members = [
        kinds.load(name).fit(
            texts, quality, experts, costs, {**config["member_config"].get(name, {}), **shared}
        )
        for name in config["members"]
    ]
    return EnsembleRouter(experts, costs, config, members)


ROUTER, TARGETS = EnsembleRouter, "quality"
