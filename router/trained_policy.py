"""A trained router artifact (any kind of ``router.kinds``) as the serving routing policy.

Config: ``policy: {name: trained, args: {artifact: routers/mlp, cost_weight: 0.0, window: 1}}``
(the kind is read from the artifact; naming a kind instead, ``name: mlp``, also insists on it), plus
``backend`` (``onnx``/``torch``) and ``quantize`` (``int8``) to override how an encoder router's
artifact runs. A relative artifact path is taken from the repository root.

When the config's experts change after training: experts the artifact does not know get no traffic
from the policy (they stay reachable by name; :attr:`unscored` and a warning name them), and experts
the artifact knows but the config no longer has are dropped from its scores and prices, with a
warning. Retrain (``expert-router pipeline`` reuses the rows it has) to route to new experts.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from router.knob import utilities
from router.policy import Message, RouteRequest, RoutingDecision, RoutingPolicy
from router.trained import conversation_text, load_router

REPO_ROOT = Path(__file__).resolve().parent.parent
logger = logging.getLogger(__name__)


class TrainedPolicy(RoutingPolicy):
    """Scores = the artifact's predicted quality minus ``cost_weight`` x relative expert cost."""

    def __init__(
        self,
        experts: Sequence[str],
        artifact: str,
        cost_weight: float = 0.0,
        window: int = 1,
        kind: str | None = None,
        backend: str | None = None,
        quantize: str | None = None,
    ):
        super().__init__(experts)
        path = Path(artifact) if Path(artifact).is_absolute() else REPO_ROOT / artifact
        overrides = {k: v for k, v in (("backend", backend), ("quantize", quantize)) if v is not None}
        self.router = load_router(path, overrides)
        self.blocking, self.kind = self.router.blocking, self.router.kind
        if kind and self.router.kind != kind:
            raise ValueError(f"artifact {artifact} holds a '{self.router.kind}' router, not '{kind}'")
        removed = [e for e in self.router.experts if e not in self.experts]
        if removed:
            logger.warning("router artifact %s: experts no longer configured, dropped: %s", artifact, removed)
        self.columns = [i for i, e in enumerate(self.router.experts) if e in self.experts]
        if not self.columns:
            raise ValueError(f"router artifact {artifact} knows none of the configured experts")
        self.scored = [self.router.experts[i] for i in self.columns]
        self.reference = self.router.expected_costs[self.columns]
        """The scale of relative costs: the scored experts' expected costs (see router.knob)."""
        self.unscored = tuple(e for e in self.experts if e not in self.scored)
        if self.unscored:
            logger.warning(
                "router artifact %s cannot score experts %s: the policy never routes to them "
                "(reachable by name); retrain to include them",
                artifact,
                list(self.unscored),
            )
        if cost_weight < 0 or window < 1:
            raise ValueError("cost_weight must be >= 0 and window >= 1")
        self.cost_weight, self.window = cost_weight, window

    def scores(self, messages: Sequence[Message], cost_weight: float | None = None) -> dict[str, float]:
        raw, costs = self.router.predict([conversation_text(list(messages), self.window)])
        return self._utilities(raw[0], costs[0], cost_weight)

    def expected_costs(self) -> dict[str, float]:
        return {name: float(cost) for name, cost in zip(self.scored, self.reference)}

    def route_batch(self, requests: Sequence[RouteRequest]) -> list[RoutingDecision]:
        """One forward pass of the router for every request's text."""
        raw, costs = self.router.predict([conversation_text(list(r.messages), self.window) for r in requests])
        return [
            self.rank(self._utilities(row, cost, r.cost_weight), r.candidates)
            for row, cost, r in zip(raw, costs, requests)
        ]

    def _utilities(self, raw: np.ndarray, costs: np.ndarray, cost_weight: float | None) -> dict[str, float]:
        """Utilities of the scored experts (expected costs relative to the priciest scored one)."""
        weight = self.cost_weight if cost_weight is None else cost_weight
        util = utilities(raw[None, self.columns], costs[None, self.columns], weight, self.reference)[0]
        known = dict(zip(self.scored, map(float, util)))
        return {name: known.get(name, -math.inf) for name in self.experts}


def factory(kind: str | None):
    """A policy factory that insists on artifacts of ``kind`` (None: any kind)."""

    def make(experts: Sequence[str], **args) -> TrainedPolicy:
        return TrainedPolicy(experts, kind=kind, **args)

    return make
