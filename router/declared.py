"""Policy ``declared``: route on what each expert says it is for, with no phase-1 outcomes.

An expert declares, in its config, any of: builtin ``skills`` (scored by the shipped skills model,
``artifacts/skills``), its own ``examples`` (queries like them match it), or, when it declares
neither, its ``description`` (zero-shot). Its score for a query is the highest calibrated
probability that the query is what it declared (router/skills.py), minus ``cost_weight`` x its
relative price. A query that matches no candidate (every score under ``threshold``) goes to the
default expert (``default: true``, else the cheapest one declaring ``general``), and the decision
says so. With ``outcomes`` (a trained router artifact from ``expert-router train``/``pipeline``),
each expert it scores is moved by ``outcome_weight`` x how much better than the scored experts'
mean it predicts the answer to be; experts it never saw keep their declared score alone.
``declare: {expert: {skills, examples, description, default}}`` overrides what experts declare in
their config, so a ``user_config`` policy update changes declarations on running replicas.

Examples are embedded when the policy is built (replica start or a ``user_config`` update), so a
config change takes effect without training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from router.config import Declaration, ExpertBase
from router.policy import Message, RouteRequest, RoutingDecision, RoutingPolicy, query_text
from router.query_files import read_records, record_text
from router.skills import SKILLS, load_skill_model

REPO_ROOT = Path(__file__).resolve().parent.parent
TYPICAL_TOKENS = 256
"""Prices become a relative cost per query at this many input and output tokens."""


def read_examples(examples: Sequence[str] | str) -> list[str]:
    """Example queries: the list itself, or those in a file of queries (any format of
    :mod:`router.query_files`; relative paths: from the working directory, else the project root)."""
    if not isinstance(examples, str):
        return [e for e in examples if e.strip()]
    path = Path(examples)
    if not path.is_absolute() and not path.exists():
        path = REPO_ROOT / path
    if not path.is_file():
        raise ValueError(f"examples file {examples} does not exist")
    try:
        records, _ = read_records(path)
    except ValueError as exc:
        raise ValueError(f"examples file {examples}: {exc}") from None
    texts = []
    for number, record in records:
        try:
            texts.append(record_text(record))
        except ValueError as exc:
            raise ValueError(f"{examples} line {number}: {exc}") from None
    return [text for text in texts if text.strip()]


class DeclaredPolicy(RoutingPolicy):
    """Scores = calibrated match of the query to each expert's declared expertise (see module)."""

    blocking = True

    def __init__(
        self,
        experts: Sequence[str],
        declarations: Mapping[str, ExpertBase] | None = None,
        skills_model: str | None = None,
        threshold: float = 0.5,
        cost_weight: float = 0.0,
        outcomes: str | None = None,
        outcome_weight: float = 1.0,
        declare: Mapping[str, Any] | None = None,
    ):
        super().__init__(experts)
        if not 0.0 <= threshold <= 1.0 or cost_weight < 0 or outcome_weight < 0:
            raise ValueError("threshold must lie in [0, 1]; cost_weight and outcome_weight must be >= 0")
        declarations = dict(declarations or {})
        missing = [e for e in self.experts if e not in declarations]
        if missing:
            raise ValueError(f"policy 'declared' needs the experts' configs; missing: {', '.join(missing)}")
        unknown = sorted(set(declare or {}) - set(self.experts))
        if unknown:
            raise ValueError(f"declare: no such expert: {', '.join(unknown)}")
        self.model = load_skill_model(skills_model)
        self.threshold, self.cost_weight, self.outcome_weight = threshold, cost_weight, outcome_weight
        configs = [declarations[e] for e in self.experts]
        declared = [
            Declaration.model_validate(
                c.model_dump(include=set(Declaration.model_fields)) | dict((declare or {}).get(c.name) or {})
            )
            for c in configs
        ]
        self.skills = [[SKILLS.index(s) for s in d.skills] for d in declared]
        embed = self.model.encoder.embed
        self.examples = [self.model.centred(embed(read_examples(d.examples))) for d in declared]
        self.described = [
            self.model.centred(embed([d.description]))[0]
            if d.description.strip() and not d.skills and not len(x)
            else None
            for d, x in zip(declared, self.examples)
        ]
        prices = np.array([c.price.cost(TYPICAL_TOKENS, TYPICAL_TOKENS) for c in configs])
        self.prices = prices
        self.relative_cost = prices / prices.max() if prices.max() > 0 else np.zeros_like(prices)
        self.default = self._default_expert(declared)
        self.outcomes = None
        if outcomes is not None:
            from router.trained import TrainedPolicy

            self.outcomes = TrainedPolicy(self.experts, outcomes)

    def _default_expert(self, declared: Sequence[Declaration]) -> str | None:
        marked = [name for name, d in zip(self.experts, declared) if d.default]
        if len(marked) > 1:
            raise ValueError(f"at most one expert may be the default; marked: {', '.join(marked)}")
        if marked:
            return marked[0]
        general = [i for i, d in enumerate(declared) if "general" in d.skills]
        return self.experts[min(general, key=lambda i: self.prices[i])] if general else None

    def matches(self, texts: list[str]) -> np.ndarray:
        """(n, experts) probability that each query is what each expert declared.

        Specific before generic: an expert's examples (or description) matching a query is
        evidence against the builtin skills of the *other* experts, so their skill probabilities
        are scaled by one minus the best such match among the others. (A translator's examples
        then win translation queries over an expert declaring ``general``, whose skill would
        otherwise claim every general query.)"""
        embedded, blocks = self.model.features(texts)
        probabilities = self.model.skill_probabilities(embedded, blocks)
        centred = self.model.centred(embedded)
        specific = np.zeros((len(texts), len(self.experts)), np.float32)
        skill = np.zeros_like(specific)
        for j in range(len(self.experts)):
            if self.skills[j]:
                skill[:, j] = probabilities[:, self.skills[j]].max(axis=1)
            if len(self.examples[j]):
                specific[:, j] = self.model.example_match(centred, self.examples[j])
            if self.described[j] is not None:
                specific[:, j] = self.model.description_match(centred, self.described[j])
        others = np.zeros_like(specific)
        for j in range(len(self.experts)):
            rest = np.delete(specific, j, axis=1)
            others[:, j] = rest.max(axis=1) if rest.shape[1] else 0.0
        return np.maximum(specific, skill * (1.0 - others))

    def _outcome_shift(self, texts: list[str]) -> np.ndarray:
        """(n, experts): outcome_weight x (predicted quality - the scored experts' mean); 0 where
        the outcome router does not score an expert."""
        shift = np.zeros((len(texts), len(self.experts)))
        if self.outcomes is None:
            return shift
        raw, _ = self.outcomes.model.predict(texts)
        predicted = raw[:, self.outcomes.columns]
        centred = predicted - predicted.mean(axis=1, keepdims=True)
        for k, name in enumerate(self.outcomes.scored):
            shift[:, self.experts.index(name)] = self.outcome_weight * centred[:, k]
        return shift

    def route_batch(self, requests: Sequence[RouteRequest]) -> list[RoutingDecision]:
        texts = [query_text(r.messages) for r in requests]
        match = self.matches(texts)
        base = match + self._outcome_shift(texts)
        decisions = []
        for row, matched, r in zip(base, match, requests):
            weight = self.cost_weight if r.cost_weight is None else r.cost_weight
            scores = dict(zip(self.experts, map(float, row - weight * self.relative_cost)))
            decisions.append(self._decide(scores, dict(zip(self.experts, matched)), r.candidates))
        return decisions

    def _decide(
        self, scores: dict[str, float], matched: dict[str, float], candidates: Sequence[str] | None
    ) -> RoutingDecision:
        decision = self.rank(scores, candidates)
        best = max(matched[name] for name in decision.ranking)
        if best >= self.threshold or self.default not in decision.ranking:
            return decision
        ranking = (self.default, *(n for n in decision.ranking if n != self.default))
        top = max(decision.scores.values())
        scores = decision.scores | {self.default: max(self.threshold, top + 1e-3)}
        note = (
            f"no candidate's declared expertise matched (best {best:.2f} < threshold "
            f"{self.threshold:g}): the default expert '{self.default}'"
        )
        return RoutingDecision(ranking=ranking, scores=scores, note=note)

    def scores(self, messages: Sequence[Message], cost_weight: float | None = None) -> dict[str, float]:
        decision = self.route_batch([RouteRequest(messages, None, cost_weight)])[0]
        return decision.scores

    def route(
        self,
        messages: Sequence[Message],
        candidates: Sequence[str] | None = None,
        cost_weight: float | None = None,
    ) -> RoutingDecision:
        return self.route_batch([RouteRequest(messages, candidates, cost_weight)])[0]

    def expected_costs(self) -> dict[str, float]:
        if self.outcomes is not None:
            return self.outcomes.expected_costs()
        return {}
