"""End to end with the shipped routing policy (routers/default, the cluster router on ONNX int8)
in front of real vLLM tiny-model experts named as in serve_config.yaml; and cancellation of
abandoned expert calls, observed in the engines themselves."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from tests.conftest import free_port, tiny_app_args

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

TIMEOUT_S = 1.5
"""The app's expert_timeout_s: short, so a long answer times out (short ones take ~0.1 s; a routed
request that is slow anyway falls back to the other expert)."""
ROUTED = [
    "What is 17 times 23?",
    "Solve for x: 3x + 5 = 20.",
    "Give me three tips for a good night's sleep.",
    "Write a short poem about autumn leaves.",
    "What is the capital of Australia?",
    "Explain how vaccines train the immune system.",
]


@pytest.fixture(scope="module")
def app():
    from deployments.launch import run_local, stop_local

    # Every decision by the model (no overload shedding), so batching is observable.
    args = tiny_app_args(expert_timeout_s=TIMEOUT_S, decisions={"max_queue_ms": 0})
    base = run_local(args, port=free_port(), num_cpus=8)
    yield base, args
    stop_local()


def shipped_policy(args: dict):
    from router.config import PolicyConfig
    from router.policy import build_policy

    return build_policy(PolicyConfig.model_validate(args["policy"]), [e["name"] for e in args["experts"]])


def test_answers_come_from_the_expert_the_shipped_policy_picks(app):
    from router.policy import Message

    base, args = app
    policy = shipped_policy(args)
    picked = {}
    for query in ROUTED:
        reply = httpx.post(
            f"{base}/predict", json={"messages": [{"role": "user", "content": query}]}, timeout=60
        )
        assert reply.status_code == 200, reply.text
        expected = policy.route([Message("user", query)])
        assert reply.json()["expert"] == expected.expert == reply.headers["x-expert"]
        served = json.loads(reply.headers["x-routing-scores"])
        assert served == pytest.approx(expected.scores, abs=1e-4)  # the same int8 encoder, same index
        picked[query] = expected.expert
    assert set(picked.values()) == {"general", "math"}  # the shipped router really routes


def test_concurrent_decisions_are_batched_off_the_event_loop(app):
    base, _ = app

    async def burst():
        limits = httpx.Limits(max_connections=48)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            bodies = [
                {"messages": [{"role": "user", "content": ROUTED[i % len(ROUTED)]}], "max_tokens": 1}
                for i in range(48)
            ]
            return await asyncio.gather(*(client.post(f"{base}/predict", json=b) for b in bodies))

    before = httpx.get(f"{base}/status", timeout=30).json()["decisions"]
    replies = asyncio.run(burst())
    assert [r.status_code for r in replies] == [200] * 48
    after = httpx.get(f"{base}/status", timeout=30).json()["decisions"]
    assert after["offloaded"] is True and after["threads"] == 1  # ingress.num_cpus 0.1 -> 1 thread
    assert after["shed"] == 0
    decided, batches = after["items"] - before["items"], after["batches"] - before["batches"]
    assert decided == 48 and batches < 48  # some decisions shared a batch


def engine_load(expert: str) -> int:
    from ray import serve

    handle = serve.get_deployment_handle(f"expert:{expert}", app_name="expert-router")
    return handle.engine_load.remote().result()["unfinished_requests"]


def seconds_until_idle(expert: str, limit_s: float = 30.0) -> float:
    started = time.monotonic()
    while engine_load(expert) and time.monotonic() - started < limit_s:
        time.sleep(0.05)
    return time.monotonic() - started


LONG = {"max_tokens": 1990, "temperature": 0.0}  # the whole 2,048-token context


@pytest.fixture(scope="module")
def long_prompt(app):
    """A prompt the tiny model answers at full length (no early end of sequence), and how long
    the whole answer takes when nobody abandons it (streamed: the expert timeout bounds only the
    wait for the first chunk)."""
    base, _ = app
    for prompt in ("Tell me a long story.", "Count to one thousand.", "x", "Describe everything."):
        body = {"model": "general", "stream": True, "messages": [{"role": "user", "content": prompt}], **LONG}
        started = time.monotonic()
        finish = None
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=120) as reply:
            for line in reply.iter_lines():
                if line.startswith("data: {"):
                    choices = json.loads(line[len("data: ") :]).get("choices") or [{}]
                    finish = choices[0].get("finish_reason") or finish
        took = time.monotonic() - started
        if finish == "length" and took > TIMEOUT_S + 1.5:
            return prompt, took
    pytest.skip("no prompt made the tiny model answer at full length")


def test_a_stream_the_client_leaves_stops_the_engine(app, long_prompt):
    base, _ = app
    prompt, full_s = long_prompt
    body = {"model": "math", "stream": True, "messages": [{"role": "user", "content": prompt}], **LONG}
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", f"{base}/v1/chat/completions", json=body) as reply:
            lines = reply.iter_lines()
            chunks = [next(lines) for _ in range(6)]  # a few chunks: the engine is generating
            assert any(c.startswith("data: {") for c in chunks)
            assert engine_load("math") == 1
    idle_after = seconds_until_idle("math")  # the client hung up just now
    assert idle_after < min(1.5, full_s / 2), (idle_after, full_s)


def test_a_non_streamed_request_the_client_abandons_stops_the_engine(app, long_prompt):
    base, _ = app
    prompt, full_s = long_prompt
    body = {"model": "general", "messages": [{"role": "user", "content": prompt}], **LONG}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{base}/v1/chat/completions", json=body, timeout=0.8)
    assert seconds_until_idle("general") < min(2.0, full_s / 2)


def test_an_expert_timeout_cancels_the_generation(app, long_prompt):
    base, _ = app
    prompt, _ = long_prompt
    body = {"model": "general", "messages": [{"role": "user", "content": prompt}], **LONG}
    started = time.monotonic()
    reply = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60)
    assert reply.status_code == 503 and "no answer within" in reply.json()["error"]["message"]
    assert time.monotonic() - started < TIMEOUT_S + 2
    assert seconds_until_idle("general") < 0.75  # not the >= 1.5 s rest of the answer
