"""Trained routers: one interface, saved as one self-describing artifact folder, and served as a
routing policy.

A trained router maps query texts to an (n, m) score matrix (higher = better expected quality for
that expert). The artifact folder holds ``router.json`` (kind, expert names, expected cost per
expert, training settings, metrics) plus the kind's weights; :func:`load_model` reads any kind back.

:class:`TrainedPolicy` serves an artifact. Config:
``policy: {name: trained, args: {artifact: artifacts/mlp, cost_weight: 0.0, window: 1}}`` (the kind
is read from the artifact; naming a kind instead, ``name: mlp``, also insists on it), plus
``backend`` (``onnx``/``torch``) and ``quantize`` (``int8``) to override how an encoder router's
artifact runs. A relative artifact path is taken from the repository root.

When the config's experts change after training: experts the artifact does not know get no traffic
from the policy (they stay reachable by name; :attr:`unscored` and a warning name them), and experts
the artifact knows but the config no longer has are dropped from its scores and prices, with a
warning. Retrain (``expert-router pipeline`` reuses the rows it has) to route to new experts.
"""

from __future__ import annotations

import json
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from router import kinds
from router.kinds import Settings
from router.knob import choose, utilities
from router.policy import Message, RouteRequest, RoutingDecision, RoutingPolicy

logger = logging.getLogger(__name__)

META_FILE = "router.json"


class RoutingModel(ABC):
    """A trained router: scores experts for query texts. Each kind is a module of ``router.kinds``;
    their classes keep the paper's names (``MLPRouter`` is its MLP-Router, ``BertRouter`` its
    BERT-Router)."""

    kind: ClassVar[str]
    blocking: ClassVar[bool] = True
    """Whether scoring is heavy enough to run off the event loop (encoders); see RoutingPolicy."""

    def __init__(self, experts: list[str], expected_costs: np.ndarray, config: Settings):
        """``expected_costs``: (m,) per expert, or the training queries' (n, m) costs (averaged);
        ``config``: its kind's settings."""
        self.experts = list(experts)
        costs = np.asarray(expected_costs, dtype=float)
        self.expected_costs = np.nanmean(costs, axis=0) if costs.ndim == 2 else costs
        self.config = config
        self.metrics: dict[str, Any] = {}

    @abstractmethod
    def scores(self, texts: list[str]) -> np.ndarray:
        """(n, m) scores for ``texts``."""

    @classmethod
    def encoder_source(cls, folder: Path, config: Any) -> str | None:
        """The encoder (name or folder) an ONNX bundle of this artifact is made from (None: no encoder)."""
        return None

    @abstractmethod
    def save_weights(self, folder: Path) -> None:
        """Write the kind's weights into ``folder``."""

    @classmethod
    @abstractmethod
    def load_weights(
        cls, folder: Path, experts: list[str], expected_costs: np.ndarray, config: Any
    ) -> RoutingModel:
        """Rebuild the router from ``folder`` (``config``: its kind's settings)."""

    def predict(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(n, m) scores and (n, m) expected costs for ``texts``: the per-expert expected costs,
        unless the kind predicts cost per query (the cluster router: its clusters' mean cost)."""
        scores = self.scores(texts)
        return scores, np.broadcast_to(self.expected_costs, scores.shape)

    def choose(self, texts: list[str], cost_weight: float = 0.0) -> np.ndarray:
        """Chosen expert index per text under the cost/quality knob."""
        return choose(*self.predict(texts), cost_weight, self.expected_costs)

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.save_weights(folder)
        meta = {
            "kind": self.kind,
            "experts": self.experts,
            "expected_costs": self.expected_costs.tolist(),
            "config": self.config.model_dump(mode="json"),
            "metrics": self.metrics,
        }
        (folder / META_FILE).write_text(json.dumps(meta, indent=2))
        return folder


INFERENCE_OPTIONS = ("backend", "quantize")
"""Config keys a loader may override: how the router runs, not what it learned."""


def read_meta(
    folder: Path, overrides: dict[str, Any] | None = None
) -> tuple[dict[str, Any], kinds.Kind, Settings]:
    """An artifact's ``router.json``, its kind and its settings with ``overrides`` (of
    :data:`INFERENCE_OPTIONS`) applied. Settings the kind does not have (an artifact from an older
    version; an encoder option for a kind without an encoder) are dropped with a warning."""
    meta_path = folder / META_FILE
    if not meta_path.exists():
        raise FileNotFoundError(f"{folder} is not a router artifact (no {META_FILE})")
    wrong = sorted(set(overrides or {}) - set(INFERENCE_OPTIONS))
    if wrong:
        raise ValueError(f"only {', '.join(INFERENCE_OPTIONS)} can be overridden, not {', '.join(wrong)}")
    meta = json.loads(meta_path.read_text())
    kind = kinds.load(meta["kind"])
    wanted = {**meta["config"], **(overrides or {})}
    known = {k: v for k, v in wanted.items() if k in kind.settings.model_fields}
    if dropped := sorted(set(wanted) - set(known)):
        logger.warning("router artifact %s: %s has no settings %s, ignored", folder, kind.name, dropped)
    return meta, kind, kind.configure(known)


def load_model(folder: str | Path, overrides: dict[str, Any] | None = None) -> RoutingModel:
    """Any trained router from its artifact folder; ``overrides`` of :data:`INFERENCE_OPTIONS`."""
    folder = Path(folder)
    meta, kind, settings = read_meta(folder, overrides)
    router = kind.model.load_weights(folder, meta["experts"], np.asarray(meta["expected_costs"]), settings)
    router.metrics = meta.get("metrics", {})
    return router


ONNX_FOLDER = "onnx"


def bundled_onnx(folder: Path) -> str | None:
    """The finished ONNX bundle stored inside an artifact (``expert-router export-onnx``), if any."""
    from router.model_cache import DONE_MARKER

    bundle = folder / ONNX_FOLDER
    return str(bundle) if (bundle / DONE_MARKER).exists() else None


def export_onnx(folder: str | Path) -> Path:
    """Store the ONNX bundle of the artifact's encoder in ``folder/onnx`` (fp32 + int8 + tokenizer), so
    the artifact serves with onnxruntime + tokenizers alone (edge deployments)."""
    from router.encoder import resolve_encoder
    from router.onnx_encoder import cached_bundle, copy_bundle

    folder = Path(folder)
    if bundled_onnx(folder):
        return folder / ONNX_FOLDER
    _, kind, settings = read_meta(folder)
    source = kind.model.encoder_source(folder, settings)
    if source is None:
        raise ValueError(f"a '{kind.name}' router has no encoder to export")
    return copy_bundle(cached_bundle(resolve_encoder(source)), folder / ONNX_FOLDER)


def conversation_text(messages: list[Any], window: int = 1) -> str:
    """What a router reads of a conversation: the last ``window`` user turns, joined."""
    users = [m.content for m in messages if m.role == "user"]
    return "\n".join(users[-window:])


REPO_ROOT = Path(__file__).resolve().parent.parent
"""Where relative artifact paths of a serving policy are taken from."""


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
        self.model = load_model(path, overrides)
        self.blocking, self.kind = self.model.blocking, self.model.kind
        if kind and self.model.kind != kind:
            raise ValueError(f"artifact {artifact} holds a '{self.model.kind}' router, not '{kind}'")
        removed = [e for e in self.model.experts if e not in self.experts]
        if removed:
            logger.warning("router artifact %s: experts no longer configured, dropped: %s", artifact, removed)
        self.columns = [i for i, e in enumerate(self.model.experts) if e in self.experts]
        if not self.columns:
            raise ValueError(f"router artifact {artifact} knows none of the configured experts")
        self.scored = [self.model.experts[i] for i in self.columns]
        self.reference = self.model.expected_costs[self.columns]
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
        raw, costs = self.model.predict([conversation_text(list(messages), self.window)])
        return self._utilities(raw[0], costs[0], cost_weight)

    def expected_costs(self) -> dict[str, float]:
        return {name: float(cost) for name, cost in zip(self.scored, self.reference)}

    def route_batch(self, requests: Sequence[RouteRequest]) -> list[RoutingDecision]:
        """One forward pass of the router for every request's text."""
        raw, costs = self.model.predict([conversation_text(list(r.messages), self.window) for r in requests])
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
