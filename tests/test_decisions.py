"""Routing decisions off the event loop: the micro-batcher and the router's use of it (no cluster)."""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time

import pytest

from deployments.dispatch import Dispatcher
from deployments.openai_api import ChatRequest
from router.decisions import MicroBatcher
from router.policy import RoutingPolicy, register_policy
from router.skills import warm_queries
from tests.test_router_fallback import ExpertHandle, ok

pytestmark = pytest.mark.timeout(60)


def test_items_that_queue_during_a_batch_are_decided_together_and_the_loop_keeps_running():
    seen: list[list[int]] = []
    threads: set[str] = set()

    def slow_square(items: list[int]) -> list[int]:
        seen.append(list(items))
        threads.add(threading.current_thread().name)
        time.sleep(0.1)  # blocking work, as an encoder forward pass is
        return [i * i for i in items]

    async def scenario():
        batcher = MicroBatcher(slow_square, max_batch_size=8)
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        tick_task = asyncio.create_task(ticker())
        first = asyncio.create_task(batcher.submit(0))
        await asyncio.sleep(0.02)  # the first batch is running now
        rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 12)]
        results = await asyncio.gather(first, *rest)
        tick_task.cancel()
        return results, ticks, batcher.stats()

    results, ticks, stats = asyncio.run(scenario())
    assert results == [i * i for i in range(12)]
    assert seen == [[0], list(range(1, 9)), list(range(9, 12))]  # queued ones batched, capped at 8
    assert stats == {"batches": 3, "items": 12, "mean_batch_size": 4.0}
    assert ticks >= 30  # ~0.3 s of blocking work never stalled the loop (5 ms ticks)
    assert threads and threading.main_thread().name not in threads


def test_max_wait_holds_a_batch_open_and_errors_reach_every_caller_of_their_batch():
    def fail_on_negative(items: list[int]) -> list[int]:
        if any(i < 0 for i in items):
            raise ValueError("negative")
        return items

    async def scenario():
        batcher = MicroBatcher(fail_on_negative, max_batch_size=16, max_wait_ms=30)
        first = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(0.01)  # within the wait: joins the first batch
        bad = asyncio.create_task(batcher.submit(-1))
        outcomes = await asyncio.gather(first, bad, return_exceptions=True)
        after = await batcher.submit(5)  # the batcher survives a failed batch
        return outcomes, after, batcher.stats()

    outcomes, after, stats = asyncio.run(scenario())
    assert all(isinstance(o, ValueError) for o in outcomes)
    assert after == 5 and stats["batches"] == 1


class SlowPolicy(RoutingPolicy):
    """A blocking policy: each batch takes 30 ms (like an encoder), counted per call. Scores are
    utilities below zero (as with a cost weight); expert c is one it never routes to (-inf)."""

    blocking = True
    batches: list[int] = []

    def scores(self, messages, cost_weight=None):
        return {"a": -0.5, "b": -0.1, "c": -math.inf}

    def route_batch(self, requests):
        SlowPolicy.batches.append(len(requests))
        time.sleep(0.03)
        return super().route_batch(requests)


register_policy("slow-test", SlowPolicy)


def router_with(**decisions) -> Dispatcher:
    args = {
        "policy": {"name": "slow-test"},
        "ingress": {"decisions": decisions},
        "experts": [{"name": n, "model": "builtin:tiny-llama"} for n in "abc"],
    }
    return Dispatcher(args, {n: ExpertHandle(ok(n)) for n in "abc"})


def burst(ingress: Dispatcher, n: int) -> list:
    """``n`` concurrent routed requests; their (response, headers)."""
    request = ChatRequest.model_validate({"messages": [{"role": "user", "content": "hi"}]})

    async def run():
        return await asyncio.gather(*(ingress.complete(request) for _ in range(n)))

    return asyncio.run(run())


@pytest.mark.parametrize("offload", ["auto", "never"])
def test_the_router_batches_blocking_decisions_off_the_loop_and_warms_up(offload):
    SlowPolicy.batches = []
    ingress = router_with(offload=offload)
    assert SlowPolicy.batches == [len(warm_queries())]  # the warm-up decisions, at start, in one batch
    answers = burst(ingress, 20)
    assert {response["expert"] for response, _ in answers} == {"b"}
    decisions = SlowPolicy.batches[1:]
    assert sum(decisions) == 20
    if offload == "auto":  # a blocking policy: in the worker thread, in batches
        assert ingress.decider.batcher is not None and len(decisions) < 20 and max(decisions) > 1
    else:  # forced inline: one decision per request, on the loop
        assert ingress.decider.batcher is None and decisions == [1] * 20


def test_cheap_policies_stay_inline():
    args = {"experts": [{"name": "a", "model": "m"}], "policy": {"name": "random"}}
    assert Dispatcher(args, {"a": ExpertHandle(ok("a"))}).decider.batcher is None
    args["ingress"] = {"decisions": {"offload": "always"}}
    assert Dispatcher(args, {"a": ExpertHandle(ok("a"))}).decider.batcher is not None


def test_under_overload_decisions_are_shed_to_the_fast_tier_from_the_first_and_say_so():
    SlowPolicy.batches = []
    ingress = router_with(offload="always", max_queue_ms=50, max_batch_size=1)
    assert ingress.decider.fast.ready  # it learned the policy's warm-up decisions at start
    burst(ingress, 4)  # teaches the time per decision (30 ms)
    answers = burst(ingress, 20)
    shed = [headers for _, headers in answers if headers.get("x-routing-shed") == "true"]
    decided = [headers for _, headers in answers if "x-routing-shed" not in headers]
    assert shed and decided and ingress.decider.shed == len(shed)  # the queue stayed near 50 ms
    assert {h["x-routing-tier"] for h in shed} == {"fast"}
    assert all(float(h["x-routing-ms"]) < 200 for h in decided)  # 20 x 30 ms unshed would be 600
    assert {response["expert"] for response, _ in answers} == {"b"}  # as the policy: b, never c


@pytest.mark.parametrize("how", [{"fast_tier": False}, {"fast_tier_after": 10**6}])
def test_without_a_ready_fast_tier_shed_decisions_come_from_the_prior(how):
    ingress = router_with(offload="always", max_queue_ms=50, max_batch_size=1, **how)
    burst(ingress, 4)
    answers = burst(ingress, 20)
    assert {h["x-routing-tier"] for _, h in answers if "x-routing-shed" in h} == {"prior"}
    # The prior (the mean of the warm-up scores) ranks as the policy did: b, never c (a prior
    # starting at 0 would put c first).
    assert {response["expert"] for response, _ in answers} == {"b"}


def test_max_queue_ms_zero_never_sheds():
    ingress = router_with(offload="always", max_queue_ms=0, max_batch_size=1)
    answers = burst(ingress, 10)
    assert ingress.decider.shed == 0 and not any("x-routing-shed" in h for _, h in answers)


class TopicPolicy(SlowPolicy):
    """A blocking policy that routes by the query: 'a' for sums, 'b' for the rest; never 'c'."""

    def scores(self, messages, cost_weight=None):
        sums = "plus" in messages[-1].content
        return {"a": 0.9 if sums else 0.2, "b": 0.3 if sums else 0.8, "c": -math.inf}


register_policy("topic-test", TopicPolicy)


def test_under_overload_the_fast_tier_decides_per_query_once_it_has_learned_the_policy():
    """Shed decisions are no constant: the tier learned from the policy's decisions routes each
    query as the policy would, says so (x-routing-tier, /status counts) and never picks c."""
    args = {
        "policy": {"name": "topic-test"},
        "ingress": {
            "decisions": {"offload": "always", "max_queue_ms": 50, "max_batch_size": 1, "fast_tier_after": 8}
        },
        "experts": [{"name": n, "model": "builtin:tiny-llama"} for n in "abc"],
    }
    ingress = Dispatcher(args, {n: ExpertHandle(ok(n)) for n in "abc"})
    queries = [f"what is {i} plus {i + 1}" if i % 2 else f"tell me about city {i}" for i in range(40)]

    async def burst(texts):
        requests = [ChatRequest.model_validate({"messages": [{"role": "user", "content": t}]}) for t in texts]
        return await asyncio.gather(*(ingress.complete(r) for r in requests))

    async def scenario():
        for text in queries[:12]:  # one at a time: every decision the policy's, and learned from
            await burst([text])
        return await burst(queries[12:])

    answers = asyncio.run(scenario())
    shed = [(text, r["expert"], h) for text, (r, h) in zip(queries[12:], answers) if "x-routing-shed" in h]
    assert shed and {h["x-routing-tier"] for _, _, h in shed} == {"fast"}
    assert {expert for _, expert, _ in shed} == {"a", "b"}
    assert all(expert == ("a" if "plus" in text else "b") for text, expert, _ in shed)
    assert ingress.decider.shed_by_tier == {"fast": len(shed)} and ingress.decider.fast.learned >= 12


def test_the_fast_tier_learns_a_domain_router_from_its_decisions_and_agrees_on_held_out_queries():
    """Taught by a policy that routes router_mix's train queries to their domain's expert, the
    tier picks the same expert for most test queries it never saw (the number in README)."""
    import gzip
    import json
    from pathlib import Path

    from router.decisions import DistilledTier
    from router.policy import Message, RoutingDecision

    path = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "router_mix.jsonl.gz"
    rows = [json.loads(line) for line in gzip.open(path, "rt")]
    random.Random(0).shuffle(rows)
    domains = sorted({r["domain"] for r in rows})
    train = [r for r in rows if r["split"] == "train"][:3000]
    test = [r for r in rows if r["split"] == "test"][:1000]
    tier = DistilledTier(domains)
    for start in range(0, len(train), 64):
        batch = train[start : start + 64]
        tier.learn(
            [r["instruction"] for r in batch],
            [RoutingDecision.from_scores({d: float(d == r["domain"]) for d in domains}) for r in batch],
        )
    chosen = [max((s := tier.scores([Message("user", r["instruction"])])), key=s.get) for r in test]
    agreement = sum(c == r["domain"] for c, r in zip(chosen, test)) / len(test)
    assert tier.ready and agreement > 0.75, agreement


def test_the_fast_tier_ranks_while_the_policy_s_recent_scores_keep_their_scale():
    """Load-aware ranking trades scores against waits: the fast tier's margins only reorder the
    prior's values, and an expert the policy never routes to stays at -inf."""
    from router.decisions import in_order_of

    prior = {"a": 0.2, "b": 0.7, "c": -math.inf}
    assert in_order_of({"a": 3.0, "b": -1.0, "c": 9.0}, prior) == {"a": 0.7, "b": 0.2, "c": -math.inf}
