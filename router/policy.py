"""Routing policies: given a conversation, rank the experts best first.

A policy is any :class:`RoutingPolicy`; :func:`build_policy` makes one from the ``policy`` block of
the config (``name`` + ``args``). New policies (the trained MLP/BERT/1NN routers) register
themselves with :func:`register_policy` and are then selectable by name in ``serve_config.yaml``.
This module does not import Ray.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from router import kinds
from router.config import ExpertBase, PolicyConfig


@dataclass(frozen=True)
class Message:
    """One conversation turn, as policies see it."""

    role: str
    content: str


@dataclass(frozen=True)
class RoutingDecision:
    """Experts best first, with the score each got (higher is better)."""

    ranking: tuple[str, ...]
    scores: dict[str, float]
    note: str | None = None
    """Why the ranking is not simply by score (e.g. the default expert took an unmatched query)."""

    @property
    def expert(self) -> str:
        return self.ranking[0]

    @classmethod
    def from_scores(cls, scores: dict[str, float]) -> RoutingDecision:
        """Rank by score, ties kept in the given order."""
        order = sorted(scores, key=lambda name: -scores[name])
        return cls(ranking=tuple(order), scores=dict(scores))


@dataclass(frozen=True)
class RouteRequest:
    """One routing question: the conversation, allowed experts (None: all) and the cost weight."""

    messages: Sequence[Message]
    candidates: Sequence[str] | None = None
    cost_weight: float | None = None


class RoutingPolicy(ABC):
    """Decides which expert answers a conversation.

    ``blocking`` policies do real compute per decision (an encoder forward pass): the router runs
    them in a worker thread, micro-batched through :meth:`route_batch`, never on its event loop.
    """

    blocking: bool = False
    kind: str | None = None
    """The trained router kind, where the policy serves an artifact (read from it)."""
    unscored: tuple[str, ...] = ()
    """Configured experts this policy cannot score (a trained artifact that never saw them): it never
    routes to them (they stay reachable by name); ``/status`` and a start-up warning name them."""

    def __init__(self, experts: Sequence[str]):
        if not experts:
            raise ValueError("a routing policy needs at least one expert")
        self.experts = tuple(experts)

    @abstractmethod
    def scores(self, messages: Sequence[Message], cost_weight: float | None = None) -> dict[str, float]:
        """A score per expert for this conversation (higher is better); policies that know prices
        trade quality for cost by ``cost_weight`` (None: their configured default)."""

    def route(
        self,
        messages: Sequence[Message],
        candidates: Sequence[str] | None = None,
        cost_weight: float | None = None,
    ) -> RoutingDecision:
        """Rank ``candidates`` (default: all experts) for this conversation."""
        return self.rank(self.scores(messages, cost_weight), candidates)

    def route_batch(self, requests: Sequence[RouteRequest]) -> list[RoutingDecision]:
        """Decisions for many requests at once (policies with a batched model override this)."""
        return [self.route(r.messages, r.candidates, r.cost_weight) for r in requests]

    def rank(self, scores: dict[str, float], candidates: Sequence[str] | None = None) -> RoutingDecision:
        """The decision from a score per expert, restricted to ``candidates``."""
        allowed = self.experts if candidates is None else tuple(c for c in self.experts if c in candidates)
        if not allowed:
            raise ValueError("no candidate expert is known to this policy")
        return RoutingDecision.from_scores({name: scores[name] for name in allowed})

    def expected_costs(self) -> dict[str, float]:
        """Mean cost in USD of a query per expert, where the policy knows it (trained artifacts:
        measured in phase 1); empty otherwise."""
        return {}

    def warm_up(self) -> RoutingDecision:
        """One decision, so the first request does not pay lazy loading."""
        return self.route_batch([RouteRequest([Message("user", "warm up")])])[0]


class RandomPolicy(RoutingPolicy):
    """Uniformly random ranking (the Random-Router baseline); ``seed`` makes it repeatable."""

    def __init__(self, experts: Sequence[str], seed: int | None = None):
        super().__init__(experts)
        self._rng = random.Random(seed)

    def scores(self, messages: Sequence[Message], cost_weight: float | None = None) -> dict[str, float]:
        return {name: self._rng.random() for name in self.experts}


class FixedPolicy(RoutingPolicy):
    """Always the same expert first (the others follow in config order, for fallback)."""

    def __init__(self, experts: Sequence[str], expert: str):
        super().__init__(experts)
        if expert not in self.experts:
            raise ValueError(f"fixed policy: unknown expert '{expert}'; known: {', '.join(self.experts)}")
        self.expert = expert

    def scores(self, messages: Sequence[Message], cost_weight: float | None = None) -> dict[str, float]:
        n = len(self.experts)
        return {
            name: 1.0 if name == self.expert else (n - i) / (n + 1) for i, name in enumerate(self.experts)
        }


PolicyFactory = Callable[..., RoutingPolicy]


def query_text(messages: Sequence[Message]) -> str:
    """The text most policies read of a conversation: its last user turn."""
    return next((m.content for m in reversed(messages) if m.role == "user"), "")


def _trained(kind: str | None) -> PolicyFactory:
    """A trained router artifact of ``kind`` (None: whatever kind the artifact holds); torch & co.
    load only when configured."""

    def make(experts: Sequence[str], **args: Any) -> RoutingPolicy:
        from router.trained import factory

        return factory(kind)(experts, **args)

    return make


def _declared(experts: Sequence[str], **args: Any) -> RoutingPolicy:
    from router.declared import DeclaredPolicy

    return DeclaredPolicy(experts, **args)


_REGISTRY: dict[str, PolicyFactory] = {
    "random": RandomPolicy,
    "fixed": FixedPolicy,
    "declared": _declared,
    "trained": _trained(None),
    **{kind: _trained(kind) for kind in kinds.names()},
}


DECLARATION_POLICIES = {"declared"}
"""Policies built with the experts' configs (what they declare), not only their names."""


def register_policy(name: str, factory: PolicyFactory) -> None:
    """Make a policy selectable by ``name`` in the config."""
    _REGISTRY[name] = factory


def available_policies() -> list[str]:
    return sorted(_REGISTRY)


def build_policy(config: PolicyConfig, experts: Sequence[str] | Sequence[ExpertBase]) -> RoutingPolicy:
    """The policy named in ``config``, over ``experts`` (names, or configs: policies that route on
    what experts declare need those); ValueError with a clear message if wrong."""
    factory = _REGISTRY.get(config.name)
    if factory is None:
        raise ValueError(f"unknown routing policy '{config.name}'; known: {', '.join(available_policies())}")
    names = [e if isinstance(e, str) else e.name for e in experts]
    args = dict(config.args)
    if config.name in DECLARATION_POLICIES:
        args["declarations"] = {e.name: e for e in experts if not isinstance(e, str)}
    try:
        return factory(names, **args)
    except TypeError as exc:
        raise ValueError(f"routing policy '{config.name}': bad args {config.args}: {exc}") from None


def to_messages(raw: Sequence[Any]) -> list[Message]:
    """Policy messages from anything with ``role`` and ``text``/``content`` attributes or keys."""
    out = []
    for m in raw:
        if isinstance(m, dict):
            out.append(Message(m["role"], str(m.get("content", ""))))
        else:
            out.append(Message(m.role, getattr(m, "text", None) or str(m.content)))
    return out
