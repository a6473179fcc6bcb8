"""Trained routers: one interface, saved as one self-describing artifact folder.

A trained router maps query texts to an (n, m) score matrix (higher = better expected quality for
that expert). The artifact folder holds ``router.json`` (kind, expert names, expected cost per
expert, training config, metrics) plus the kind's weights; :func:`load_router` reads any kind back.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from router.knob import choose

META_FILE = "router.json"
_KINDS: dict[str, type[TrainedRouter]] = {}


class TrainedRouter(ABC):
    """Scores experts for query texts; subclasses register themselves by ``kind``."""

    kind: ClassVar[str]

    def __init__(self, experts: list[str], expected_costs: np.ndarray, config: dict[str, Any]):
        self.experts = list(experts)
        self.expected_costs = np.asarray(expected_costs, dtype=float)
        self.config = dict(config)
        self.metrics: dict[str, Any] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if getattr(cls, "kind", None):
            _KINDS[cls.kind] = cls

    @abstractmethod
    def scores(self, texts: list[str]) -> np.ndarray:
        """(n, m) scores for ``texts``."""

    @abstractmethod
    def save_weights(self, folder: Path) -> None:
        """Write the kind's weights into ``folder``."""

    @classmethod
    @abstractmethod
    def load_weights(
        cls, folder: Path, experts: list[str], expected_costs: np.ndarray, config: dict
    ) -> TrainedRouter:
        """Rebuild the router from ``folder``."""

    def choose(self, texts: list[str], cost_weight: float = 0.0) -> np.ndarray:
        """Chosen expert index per text under the cost/quality knob."""
        return choose(self.scores(texts), self.expected_costs, cost_weight)

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.save_weights(folder)
        meta = {
            "kind": self.kind,
            "experts": self.experts,
            "expected_costs": self.expected_costs.tolist(),
            "config": self.config,
            "metrics": self.metrics,
        }
        (folder / META_FILE).write_text(json.dumps(meta, indent=2))
        return folder


def load_router(folder: str | Path) -> TrainedRouter:
    """Any trained router from its artifact folder."""
    folder = Path(folder)
    meta_path = folder / META_FILE
    if not meta_path.exists():
        raise FileNotFoundError(f"{folder} is not a router artifact (no {META_FILE})")
    meta = json.loads(meta_path.read_text())
    kind = meta["kind"]
    _import_kinds()
    if kind not in _KINDS:
        raise ValueError(f"unknown router kind '{kind}'; known: {', '.join(sorted(_KINDS))}")
    router = _KINDS[kind].load_weights(
        folder, meta["experts"], np.asarray(meta["expected_costs"]), meta["config"]
    )
    router.metrics = meta.get("metrics", {})
    return router


def _import_kinds() -> None:
    """Import the modules that define the kinds, so they register."""
    import router.bert  # noqa: F401
    import router.knn  # noqa: F401
    import router.mlp  # noqa: F401


def conversation_text(messages: list[Any], window: int = 1) -> str:
    """What a router reads of a conversation: the last ``window`` user turns, joined."""
    users = [m.content for m in messages if m.role == "user"]
    return "\n".join(users[-window:])
