"""The decide stage: each routing question's decision from the policy, never blocking the
router's event loop, and never the bottleneck.

- :class:`MicroBatcher` runs blocking work (encoder policies' decisions) in one worker thread:
  callers ``await batcher.submit(item)``; one consumer task takes every queued item (up to
  ``max_batch_size``) and hands them to ``fn`` as one list. Items that arrive while a batch runs
  form the next batch, so batches grow with load and an idle router adds no wait (``max_wait_ms``,
  default 0, optionally holds a batch open longer). Not ``ray.serve.batch``: its consumer pulls a
  new batch as soon as one item is queued, even while the previous batch still runs, so with a
  zero wait its batches stay at one item under load, and a non-zero wait delays every request.
- :class:`DistilledTier`, the overload tier: a linear classifier over hashed word 1–2-grams
  (about 0.1–0.3 ms a query) that predicts the policy's first choice, learned online
  (``SGDClassifier.partial_fit``) from the policy's own decisions on the traffic the replica sees.
- :class:`Decider` puts them together over one policy (``ingress.decisions``): inline for cheap
  policies, batched in the worker thread for blocking ones, and a decision that would wait over
  ``max_queue_ms`` is shed: made by the fast tier once it has learned, else by the prior (the
  moving average of the policy's scores).

This module does not import Ray.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.linear_model import SGDClassifier

from router.config import DecisionConfig, ExpertBase, PolicyConfig
from router.policy import Message, RouteRequest, RoutingDecision, RoutingPolicy, build_policy, query_text
from router.skills import warm_queries

logger = logging.getLogger("ray.serve")

Item = TypeVar("Item")
Result = TypeVar("Result")


class MicroBatcher(Generic[Item, Result]):
    """Runs ``fn(list_of_items) -> list_of_results`` in one worker thread, batching concurrent calls."""

    def __init__(
        self,
        fn: Callable[[list[Item]], Sequence[Result]],
        max_batch_size: int = 64,
        max_wait_ms: float = 0.0,
        name: str = "decisions",
    ):
        if max_batch_size < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_size must be >= 1 and max_wait_ms >= 0")
        self.fn, self.max_batch_size, self.max_wait_s = fn, max_batch_size, max_wait_ms / 1e3
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._queue: asyncio.Queue[tuple[Item, asyncio.Future]] | None = None
        self._consumer: asyncio.Task | None = None
        self.batches = 0
        self.items = 0
        self.pending = 0  # submitted, not yet answered
        self.seconds_per_item = 0.0  # moving average of the compute time per item

    def expected_wait_s(self) -> float:
        """Roughly how long a new item would wait for its result now."""
        return self.pending * self.seconds_per_item

    async def submit(self, item: Item) -> Result:
        """The result for ``item``, computed in a batch with whatever else is waiting."""
        loop = asyncio.get_running_loop()
        if self._consumer is None or self._consumer.done() or self._consumer.get_loop() is not loop:
            self._queue = asyncio.Queue()
            self._consumer = loop.create_task(self._consume())
        future: asyncio.Future = loop.create_future()
        self._queue.put_nowait((item, future))
        self.pending += 1
        try:
            return await future
        finally:
            self.pending -= 1

    async def _consume(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch_size:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            batch = [(item, future) for item, future in batch if not future.cancelled()]
            if not batch:
                continue
            started = time.monotonic()
            try:
                results = await loop.run_in_executor(self._executor, self.fn, [item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"batched function returned {len(results)} results for {len(batch)}")
            except Exception as exc:  # every caller of this batch gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            per_item = (time.monotonic() - started) / len(batch)
            smoothed = 0.8 * self.seconds_per_item + 0.2 * per_item
            self.seconds_per_item = smoothed if self.batches else per_item
            self.batches += 1
            self.items += len(batch)
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)

    def stats(self) -> dict[str, Any]:
        """Batches run, items decided and the mean batch size so far."""
        return {
            "batches": self.batches,
            "items": self.items,
            "mean_batch_size": round(self.items / self.batches, 2) if self.batches else 0.0,
        }


class DistilledTier:
    """Scores per expert for one query (the classifier's margins: the policy's likely first choice
    highest). Thread-safe for one learner and any number of readers: each update publishes a copy
    of the weights in one assignment."""

    def __init__(self, experts: Sequence[str], n_features: int = 2**16, ready_after: int = 64):
        self.experts = list(experts)
        self.ready_after = ready_after
        self._vectorizer = HashingVectorizer(
            n_features=n_features, ngram_range=(1, 2), alternate_sign=False, norm="l2"
        )
        self._learner = SGDClassifier(alpha=1e-4, random_state=0)
        self._weights: tuple[np.ndarray, np.ndarray] | None = None
        self.learned = 0
        """Decisions learned from."""

    @property
    def ready(self) -> bool:
        return self._weights is not None and self.learned >= self.ready_after

    def learn(self, texts: Sequence[str], decisions: Sequence[RoutingDecision]) -> None:
        """One pass of SGD over a batch of the policy's decisions (their first choices)."""
        labels = [self.experts.index(d.expert) for d in decisions]
        with warnings.catch_warnings():  # a batch may hold one class only: fine for partial_fit
            warnings.simplefilter("ignore")
            self._learner.partial_fit(
                self._vectorizer.transform(texts), labels, classes=np.arange(len(self.experts))
            )
        coef, intercept = self._learner.coef_, self._learner.intercept_
        if len(self.experts) == 2:  # a binary classifier has one margin: the second expert's
            coef, intercept = np.vstack([-coef, coef]), np.concatenate([-intercept, intercept])
        self._weights = (coef.T.copy(), intercept.copy())
        self.learned += len(texts)

    def scores(self, messages: Sequence[Message]) -> dict[str, float]:
        """Each expert's score for this conversation (higher is better)."""
        if self._weights is None:
            raise RuntimeError("the fast tier has not learned yet")
        weights, bias = self._weights
        row = self._vectorizer.transform([query_text(messages)]) @ weights + bias
        return dict(zip(self.experts, np.asarray(row).ravel().tolist()))


Lesson = tuple[list[str], list[RoutingDecision]]
"""Queries and the policy's decisions on them, for the fast tier to learn from."""


@dataclass
class LoadedPolicy:
    """A policy ready to route: built, warmed up, with what its warm-up decisions taught."""

    config: PolicyConfig
    policy: RoutingPolicy
    prior: dict[str, float]
    """The mean of its warm-up scores per expert: starts the moving average shed decisions use."""
    lesson: Lesson
    """The warm-up queries and decisions: the fast tier's first lesson."""

    @classmethod
    def load(cls, config: PolicyConfig, experts: Sequence[ExpertBase]) -> LoadedPolicy:
        """The policy of ``config`` with its lazily built parts loaded now (not on the first user
        request), decided on the warm-up queries (``router.skills.warm_queries``); -inf stays -inf
        in the prior, so experts the policy never routes to stay last. Blocking."""
        policy = build_policy(config, experts)
        texts = warm_queries()
        decisions = policy.route_batch([RouteRequest([Message("user", t)]) for t in texts])
        prior = {name: float(np.mean([d.scores[name] for d in decisions])) for name in policy.experts}
        return cls(config, policy, prior, (texts, decisions))


def learning(
    policy: RoutingPolicy, fast: DistilledTier, experts: Sequence[str]
) -> Callable[[Sequence[RouteRequest]], list[RoutingDecision]]:
    """``policy.route_batch`` that also hands each batch it decides to ``fast`` to learn from, in a
    thread of its own after the decisions return (a batch that comes while the tier is still
    learning is skipped: bounded work). Only unrestricted questions teach it (every expert a
    candidate, no per-request cost weight): shed decisions are made for any request."""
    learner = ThreadPoolExecutor(1, thread_name_prefix="fast-tier")
    busy = threading.Lock()
    everyone = set(experts)

    def learn(texts: list[str], decisions: list[RoutingDecision]) -> None:
        try:
            fast.learn(texts, decisions)
        except Exception as exc:
            logger.warning("the fast tier could not learn from a batch: %s", exc)
        finally:
            busy.release()

    def decide(questions: Sequence[RouteRequest]) -> list[RoutingDecision]:
        decisions = policy.route_batch(questions)
        taught = [
            (query_text(q.messages), d)
            for q, d in zip(questions, decisions)
            if q.cost_weight is None and (q.candidates is None or set(q.candidates) == everyone)
        ]
        if taught and busy.acquire(blocking=False):
            texts, chosen = zip(*taught)
            learner.submit(learn, list(texts), list(chosen))
        return decisions

    return decide


def in_order_of(order: dict[str, float], scale: dict[str, float]) -> dict[str, float]:
    """``scale``'s finite scores handed out in ``order``'s ranking (its best gets the highest):
    the fast tier ranks, the policy's recent scores keep the scale load-aware ranking trades
    against expected waits; an expert at -inf (never routed to) stays there."""
    finite = [name for name in scale if math.isfinite(scale[name])]
    ranked = sorted(finite, key=lambda name: -order[name])
    return {**scale, **dict(zip(ranked, sorted((scale[n] for n in finite), reverse=True)))}


class Decider:
    """One replica's decisions by its current policy (see the module docstring)."""

    def __init__(self, settings: DecisionConfig, experts: Sequence[str], loaded: LoadedPolicy):
        self.settings, self.experts = settings, list(experts)
        self.batcher: MicroBatcher[RouteRequest, RoutingDecision] | None = None
        self.fast: DistilledTier | None = None
        self.shed = 0
        self.shed_by_tier: Counter[str] = Counter()
        self.use(loaded)

    def use(self, loaded: LoadedPolicy) -> None:
        """Decide by ``loaded`` from now on (no await here: one request sees one policy). Questions
        already queued for the worker thread are decided by whichever policy is current when their
        batch runs. A new fast tier learns the policy's warm-up decisions first, so it is ready
        before the first shed decision."""
        settings, names = self.settings, self.experts
        policy = loaded.policy
        offload = settings.offload == "always" or (settings.offload == "auto" and policy.blocking)
        learns = offload and settings.fast_tier and len(names) > 1
        fast = DistilledTier(names, ready_after=settings.fast_tier_after) if learns else None
        if fast is not None and loaded.lesson[0]:
            fast.learn(*loaded.lesson)
        decide = learning(policy, fast, names) if fast is not None else policy.route_batch
        if offload and self.batcher is not None:
            self.batcher.fn = decide
        elif offload:
            self.batcher = MicroBatcher(decide, settings.max_batch_size, settings.max_wait_ms)
        else:
            self.batcher = None  # a former worker thread idles until the replica stops
        self.fast, self.policy, self.prior = fast, policy, dict(loaded.prior)

    async def decide(self, question: RouteRequest) -> tuple[RoutingDecision, str | None]:
        """The policy's decision, and the tier overload shed it to (None: the policy decided)."""
        if self.batcher is None:
            return self.policy.route_batch([question])[0], None
        budget_ms = self.settings.max_queue_ms
        if budget_ms and self.batcher.expected_wait_s() * 1e3 > budget_ms:
            tier, scores = "prior", self.prior
            if self.fast is not None and self.fast.ready:
                try:
                    scores = in_order_of(self.fast.scores(question.messages), self.prior)
                    tier = "fast"
                except Exception as exc:
                    logger.warning("the fast tier failed; deciding from the prior: %s", exc)
            self.shed += 1
            self.shed_by_tier[tier] += 1
            return self.policy.rank(scores, question.candidates), tier
        decision = await self.batcher.submit(question)
        for name, score in decision.scores.items():
            if math.isfinite(score):
                self.prior[name] = 0.98 * self.prior[name] + 0.02 * score
        return decision, None

    def stats(self) -> dict[str, Any]:
        """How decisions run: offloaded or inline, shed counts, the fast tier and the batches."""
        return {
            "offloaded": self.batcher is not None,
            "shed": self.shed,
            "shed_by_tier": dict(self.shed_by_tier),
            "fast_tier": {"ready": self.fast.ready, "learned": self.fast.learned} if self.fast else None,
            **(self.batcher.stats() if self.batcher else {}),
        }
