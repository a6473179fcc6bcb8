"""Trained routers: one interface, saved as one self-describing artifact folder.

A trained router maps query texts to an (n, m) score matrix (higher = better expected quality for
that expert). The artifact folder holds ``router.json`` (kind, expert names, expected cost per
expert, training config, metrics) plus the kind's weights; :func:`load_router` reads any kind back.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from router import kinds
from router.kinds import Settings
from router.knob import choose

logger = logging.getLogger(__name__)

META_FILE = "router.json"


class TrainedRouter(ABC):
    """Scores experts for query texts; each kind is a module of ``router.kinds``."""

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
    ) -> TrainedRouter:
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


def read_meta(folder: Path) -> tuple[dict[str, Any], kinds.Kind, Settings]:
    """An artifact's ``router.json``, its kind and its settings. Settings the kind no longer has
    (an artifact from an older version) are dropped with a warning."""
    meta_path = folder / META_FILE
    if not meta_path.exists():
        raise FileNotFoundError(f"{folder} is not a router artifact (no {META_FILE})")
    meta = json.loads(meta_path.read_text())
    kind = kinds.load(meta["kind"])
    known = {k: v for k, v in meta["config"].items() if k in kind.settings.model_fields}
    if dropped := sorted(set(meta["config"]) - set(known)):
        logger.warning(
            "router artifact %s: settings %s are not %s's any more, ignored", folder, dropped, kind.name
        )
    return meta, kind, kind.configure(known)


def load_router(folder: str | Path, overrides: dict[str, Any] | None = None) -> TrainedRouter:
    """Any trained router from its artifact folder; ``overrides`` of :data:`INFERENCE_OPTIONS`."""
    folder = Path(folder)
    meta, kind, settings = read_meta(folder)
    wrong = sorted(set(overrides or {}) - set(INFERENCE_OPTIONS))
    if wrong:
        raise ValueError(f"only {', '.join(INFERENCE_OPTIONS)} can be overridden, not {', '.join(wrong)}")
    applicable = {k: v for k, v in (overrides or {}).items() if k in kind.settings.model_fields}
    if ignored := sorted(set(overrides or {}) - set(applicable)):
        logger.warning("a '%s' router runs no encoder: %s ignored", kind.name, ", ".join(ignored))
    if applicable:
        settings = kind.configure({**settings.model_dump(exclude_unset=True), **applicable})
    router = kind.router.load_weights(folder, meta["experts"], np.asarray(meta["expected_costs"]), settings)
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
    source = kind.router.encoder_source(folder, settings)
    if source is None:
        raise ValueError(f"a '{kind.name}' router has no encoder to export")
    return copy_bundle(cached_bundle(resolve_encoder(source)), folder / ONNX_FOLDER)


def conversation_text(messages: list[Any], window: int = 1) -> str:
    """What a router reads of a conversation: the last ``window`` user turns, joined."""
    users = [m.content for m in messages if m.role == "user"]
    return "\n".join(users[-window:])
