"""Load-aware routing: the live load tracker, the utility, latency objectives and in-flight caps,
driven through the router with in-process expert handles (the real Serve + vLLM path is measured
by bench/skew.py and covered end to end in test_serving_production.py)."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from deployments.dispatch import Dispatcher, RoutingError
from deployments.ingress import api_error
from deployments.openai_api import ChatRequest
from router.balance import ExpertLoad, LoadTracker, load_aware_ranking
from tests.test_router_fallback import ARGS, ExpertHandle, ok, reply


def request(**routing) -> ChatRequest:
    body = {"messages": [{"role": "user", "content": "hi"}], **({"routing": routing} if routing else {})}
    return ChatRequest.model_validate(body)


def router(args=ARGS, **behaviours) -> tuple[Dispatcher, dict[str, ExpertHandle]]:
    handles = {name: ExpertHandle(behaviours.get(name, ok(name))) for name in ("a", "b", "c")}
    return Dispatcher(args, handles), handles


def loaded(ttft: float, idle: float, in_flight: int, load_at_sample: float = 1.0) -> ExpertLoad:
    return ExpertLoad(in_flight=in_flight, ttft_s=ttft, idle_ttft_s=idle, load_at_sample=load_at_sample)


def test_expected_wait_is_the_measured_excess_ttft_scaled_by_load_now_against_then():
    assert ExpertLoad().expected_wait_s() == 0.0  # nothing measured yet: no penalty
    assert loaded(0.5, 0.1, in_flight=0).expected_wait_s() == pytest.approx(0.4)
    assert loaded(0.5, 0.1, in_flight=3, load_at_sample=2.0).expected_wait_s() == pytest.approx(0.8)
    two_replicas = loaded(0.5, 0.1, in_flight=3, load_at_sample=2.0)
    two_replicas.replicas = 2
    assert two_replicas.expected_wait_s() == pytest.approx(0.4)
    assert loaded(0.5, 0.1, in_flight=0).expected_ttft_s() == pytest.approx(0.5)


def test_with_a_known_capacity_only_requests_beyond_it_wait_one_service_time_per_round():
    full = ExpertLoad(capacity=8, service_s=2.0, in_flight=7)
    assert full.expected_wait_s() == 0.0  # the 8th request runs at once: no wait below saturation
    full.in_flight = 11  # the 12th: 4 ahead of it beyond 8 slots, half a round of 2 s
    assert full.expected_wait_s() == pytest.approx(4 / 8 * 2.0)
    full.replicas = 2  # 16 slots: runs at once
    assert full.expected_wait_s() == 0.0
    full.routers = 4  # four router replicas share those 16: this one counts on 4
    assert full.slots() == 4 and full.expected_wait_s() == pytest.approx(8 / 4 * 2.0)
    assert ExpertLoad(capacity=8, in_flight=20).expected_wait_s() == 0.0  # no service time yet
    # The tracker samples the service time only from requests that did not queue.
    tracker = LoadTracker(["a"], capacities={"a": 1})
    first = tracker.start("a")
    queued = tracker.start("a")  # started with one in flight at capacity 1: it queued
    time.sleep(0.03)
    tracker.first(first, tokens=2)
    tracker.finish(first, 2)
    service = tracker.state["a"].service_s
    assert 0.025 < service < 0.2
    tracker.first(queued, tokens=2)
    tracker.finish(queued, 2)
    assert tracker.state["a"].service_s == service
    snapshot = tracker.snapshot()["a"]
    assert snapshot["capacity"] == 1 and snapshot["service_ms"] == pytest.approx(service * 1e3, abs=1e-3)


def test_tracker_counts_in_flight_and_measures_ttft_and_tpot():
    tracker = LoadTracker(["a"])
    stream = tracker.start("a")
    assert tracker.state["a"].in_flight == 1
    time.sleep(0.02)
    tracker.first(stream)
    time.sleep(0.02)
    tracker.finish(stream, output_tokens=5, streamed=True)
    tracker.finish(stream, output_tokens=5, streamed=True)  # a second finish is a no-op
    state = tracker.state["a"]
    assert state.in_flight == 0 and state.answered == 1
    assert 0.015 < state.ttft_s < 0.2 and 0.003 < state.tpot_s < 0.05
    # A whole (non-streamed) reply: its TTFT is the reply time less its tokens at the measured TPOT.
    whole = tracker.start("a")
    time.sleep(0.05)
    before, elapsed = state.ttft_s, time.perf_counter() - whole.started
    tracker.first(whole, tokens=3)
    sample = (state.ttft_s - (1 - tracker.alpha) * before) / tracker.alpha
    assert sample == pytest.approx(elapsed - 2 * state.tpot_s, abs=0.005)
    tracker.finish(whole, 3)
    failed = tracker.start("a")
    tracker.finish(failed)
    assert state.in_flight == 0 and state.answered == 2  # failures are not answers
    # An expert that only ever answers whole replies still gets a TTFT (the lowest time per token
    # of its replies stands in for TPOT).
    only_whole = LoadTracker(["b"])
    reply_ = only_whole.start("b")
    time.sleep(0.04)
    only_whole.first(reply_, tokens=4)
    assert 0.005 < only_whole.state["b"].ttft_s < 0.04


def test_load_weight_zero_is_the_policys_ranking_exactly_and_a_weight_trades_score_for_wait():
    scores = {"a": 0.9, "b": 0.6, "c": -math.inf}
    waits = {"a": 2.0, "b": 0.0, "c": 0.0}
    assert load_aware_ranking(["a", "b", "c"], scores, waits, 0.0) == ["a", "b", "c"]
    assert load_aware_ranking(["a", "b", "c"], scores, waits, 0.1) == ["a", "b", "c"]  # 0.2 < 0.3 gap
    assert load_aware_ranking(["a", "b", "c"], scores, waits, 1.0) == ["b", "a", "c"]  # -inf stays last
    noise = {"a": 0.04, "b": 0.0}  # within the slack: no penalty, however large the weight
    assert load_aware_ranking(["a", "b"], scores, noise, 100.0, slack_s=0.05) == ["a", "b"]


def test_a_busy_top_expert_gives_way_and_the_reply_says_why():
    ingress, handles = router()
    ingress.load.state["a"] = loaded(ttft=2.0, idle=0.1, in_flight=0)
    body, headers = asyncio.run(ingress.complete(request(explain=True)))
    assert body["expert"] == "b" and handles["a"].calls == 0
    load = body["routing"]["load"]
    assert load["policy_choice"] == "a" and load["changed"] and load["expected_wait_ms"]["a"] == 1900.0
    assert headers["x-routing-load-changed"] == "true" and headers["x-routing-policy-choice"] == "a"
    # Per request: load_weight 0 ignores load; the same state, the policy's choice.
    body, headers = asyncio.run(ingress.complete(request(load_weight=0)))
    assert body["expert"] == "a" and "x-routing-load-changed" not in headers
    # An expert that can still add replicas keeps its traffic (prefer_scaling).
    ingress.can_scale["a"] = True
    assert asyncio.run(ingress.complete(request()))[0]["expert"] == "a"


def test_an_expert_with_room_keeps_its_traffic_and_one_past_its_capacity_gives_way():
    four = {"max_num_seqs": 4}
    experts = [{"name": n, "model": "builtin:tiny-llama", "engine_kwargs": four} for n in "abc"]
    ingress, _ = router({**ARGS, "experts": experts})
    state = ingress.load.state["a"]
    assert state.capacity == 4
    state.service_s, state.in_flight = 3.0, 3  # busy and slow, but the 4th request has a slot
    assert asyncio.run(ingress.complete(request()))[0]["expert"] == "a"
    state.service_s, state.in_flight = 3.0, 6  # 3 ahead of a new request beyond 4 slots: 3/4 x 3 s
    body, _ = asyncio.run(ingress.complete(request(explain=True)))
    assert body["expert"] == "b" and body["routing"]["load"]["expected_wait_ms"]["a"] == 2250.0


def test_max_ttft_passes_over_slow_experts_and_strict_is_a_503():
    ingress, _ = router()
    for name in ("a", "b"):
        ingress.load.state[name] = loaded(ttft=0.5, idle=0.5, in_flight=0)  # slow, not queueing
    body, _ = asyncio.run(ingress.complete(request(max_ttft_ms=100, explain=True)))
    assert body["expert"] == "c" and body["routing"]["load"]["passed_over"] == ["a", "b"]
    ingress.load.state["c"] = loaded(ttft=0.5, idle=0.5, in_flight=0)
    assert asyncio.run(ingress.complete(request(max_ttft_ms=100)))[0]["expert"] == "a"  # best effort
    with pytest.raises(RoutingError) as info:
        asyncio.run(ingress.complete(request(max_ttft_ms=100, strict_latency=True)))
    assert (
        api_error(info.value).status == 503 and api_error(info.value).info.code == "latency_objective_unmet"
    )


def test_max_in_flight_spills_to_the_next_expert_and_all_full_is_a_429_with_retry_after():
    args = {**ARGS, "experts": [{"name": n, "model": "m", "max_in_flight": 1} for n in ("a", "b", "c")]}
    gate = asyncio.Event()

    def held(name):
        async def run(_):
            await gate.wait()
            return reply(name)

        return run

    ingress, _ = router(args, a=held("a"), b=held("b"), c=held("c"))

    async def scenario():
        first = [asyncio.create_task(ingress.complete(request())) for _ in range(3)]
        await asyncio.sleep(0.05)
        assert {n: s.in_flight for n, s in ingress.load.state.items()} == {"a": 1, "b": 1, "c": 1}
        with pytest.raises(RoutingError) as info:
            await ingress.complete(request())
        gate.set()
        answers = [body["expert"] for body, _ in await asyncio.gather(*first)]
        return answers, api_error(info.value)

    answers, error = asyncio.run(scenario())
    assert answers == ["a", "b", "c"]  # each one past the cap spilled down the ranking
    assert error.status == 429 and error.info.code == "experts_overloaded"
    assert error.response().headers["retry-after"] == "1"
    assert all(s.in_flight == 0 for s in ingress.load.state.values())  # nothing leaks
    bypass = ChatRequest.model_validate({"model": "a", "messages": [{"role": "user", "content": "hi"}]})
    assert asyncio.run(ingress.complete(bypass))[0]["expert"] == "a"


def test_a_lora_adapter_and_its_base_share_their_engines_load():
    args = {
        **ARGS,
        "experts": [
            {"name": "a", "model": "builtin:tiny-llama", "engine_kwargs": {"max_num_seqs": 2}},
            {"name": "b", "model": "builtin:tiny-llama-lora-a", "base": "a"},
            {"name": "c", "model": "builtin:tiny-llama", "engine_kwargs": {"max_num_seqs": 2}},
        ],
    }
    ingress, _ = router(args)
    state = ingress.load.state
    assert state["a"] is state["b"] and state["c"] is not state["a"] and state["b"].capacity == 2
    held = [ingress.load.start(name) for name in ("a", "b", "b")]  # three on one engine of two sequences
    state["a"].service_s = state["c"].service_s = 0.5
    assert state["b"].in_flight == 3 and state["b"].expected_wait_s() > 0 == state["c"].expected_wait_s()
    for attempt in held:
        ingress.load.finish(attempt)
    assert state["a"].in_flight == 0
