"""End to end with the shipped routing policy (``declared``: the skills the experts of
serve_config.yaml declare) in front of real vLLM tiny-model experts named and declared as there,
plus two LoRA adapter experts on ``general``'s engine that declare nothing; in-place updates of
what experts declare, with an outcome router added; adapters answering, streaming and taking part
in fallback; and cancellation of abandoned expert calls, observed in the engines themselves."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from tests.conftest import tiny_app_args

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
def app(serve_cluster):
    from deployments.app import build_app

    # Every decision by the model (no overload shedding), so batching is observable.
    args = tiny_app_args(expert_timeout_s=TIMEOUT_S, decisions={"max_queue_ms": 0})
    # Two LoRA adapters of the tiny model on general's engine (deployments/experts/model_store.py), experts
    # that declare nothing: the shipped policy never routes to them until they declare.
    sampling = args["experts"][0]["sampling"]
    args["experts"] += [
        {"name": "translator", "model": "builtin:tiny-llama-lora-a", "base": "general", "sampling": sampling},
        {"name": "poet", "model": "builtin:tiny-llama-lora-b", "base": "general", "sampling": sampling},
    ]
    with serve_cluster.apps("expert-router") as cluster:
        yield cluster.run(build_app(args), "expert-router", "/", ready=True), args


def shipped_policy(args: dict):
    from deployments.config import AppConfig
    from router.policy import build_policy

    config = AppConfig.parse(args)
    return build_policy(config.policy, config.experts)


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
    assert set(picked.values()) == {"general", "math"}  # the shipped policy really routes


def explained(base: str, query: str) -> tuple[dict, dict]:
    body = {"messages": [{"role": "user", "content": query}], "max_tokens": 4, "routing": {"explain": True}}
    reply = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    return reply.json(), reply.headers


def test_a_query_no_expert_declared_goes_to_the_default_and_explain_says_so(app):
    base, _ = app
    body, headers = explained(base, "Write a Python function that reverses a linked list.")
    assert body["expert"] == headers["x-expert"] == "general"  # serve_config.yaml: default: true
    assert "default expert 'general'" in body["routing"]["note"]
    body, _ = explained(base, "What is 17 times 23?")
    assert body["expert"] == "math" and body["routing"]["note"] is None


TRANSLATION = ["Translate 'good night' into Spanish.", "How do you say 'good luck' in German?"]


def test_an_expert_that_declares_examples_in_place_is_routed_to_at_once_beside_an_outcome_router(app):
    """A ``user_config`` policy update (Serve's in-place ``reconfigure`` of the router replica):
    the expert that declared nothing now declares examples, and artifacts/default (outcomes of
    general and math only) joins; translation queries go to the new expert at once, the others
    still by skills and outcomes, with no replica restarted."""
    from ray import serve

    base, args = app
    assert all(explained(base, q)[0]["expert"] != "translator" for q in TRANSLATION)
    examples = ["Translate 'thank you' into Italian.", "How do you say 'good morning' in French?"]
    policy = {
        "name": "declared",
        "args": {"declare": {"translator": {"examples": examples}}, "outcomes": "artifacts/default"},
    }
    router = serve.get_deployment_handle("ingress", app_name="expert-router")
    router.reconfigure.remote({"policy": policy}).result(timeout_s=120)
    try:
        status = httpx.get(f"{base}/status", timeout=30).json()
        assert status["policy"]["name"] == "declared" and "translator" in json.dumps(status["policy"])
        for query in TRANSLATION:
            body, headers = explained(base, query)
            assert body["expert"] == "translator", body["routing"]
        assert explained(base, "Solve for x: 3x + 5 = 20.")[0]["expert"] == "math"
        assert explained(base, "Who wrote Hamlet?")[0]["expert"] == "general"
    finally:
        router.reconfigure.remote({"policy": args["policy"]}).result(timeout_s=120)


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


def chat(base: str, **body) -> httpx.Response:
    return httpx.post(f"{base}/v1/chat/completions", json={"max_tokens": 8, **body}, timeout=60)


def test_two_lora_adapters_on_one_engine_answer_as_two_experts_routed_and_streamed(app):
    from ray import serve

    base, _ = app
    hello = [{"role": "user", "content": "Hello there, how are you?"}]
    answers = {}
    for name in ("general", "translator", "poet"):
        reply = chat(base, model=name, messages=hello)
        assert reply.status_code == 200 and reply.json()["expert"] == reply.headers["x-expert"] == name
        answers[name] = reply.json()["choices"][0]["message"]["content"]
    assert len(set(answers.values())) == 3, answers  # each adapter changes what the model writes
    # Routed to an adapter (routing.experts), streamed: the same answer, chunk by chunk.
    body = {
        "model": "router",
        "stream": True,
        "messages": hello,
        "max_tokens": 8,
        "routing": {"experts": ["poet"]},
    }
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as reply:
        assert reply.status_code == 200 and reply.headers["x-expert"] == "poet"
        chunks = [json.loads(line[6:]) for line in reply.iter_lines() if line.startswith("data: {")]
    assert (
        "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        == answers["poet"]
    )
    # One engine serves all three: the adapters have no deployment of their own.
    deployments = serve.status().applications["expert-router"].deployments
    assert {"expert:general", "expert:math"} <= set(deployments) and "expert:poet" not in deployments
    models = {m["id"] for m in httpx.get(f"{base}/v1/models", timeout=30).json()["data"]}
    assert {"translator", "poet"} <= models


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


def test_a_routed_request_falls_back_to_a_lora_adapter_and_its_abandoned_call_is_cancelled(app, long_prompt):
    """The last test of the module: the failed experts cool down. poet is an adapter on general's
    engine, which timed out in the test before: it cools down with it, so wait that out first."""
    from router.config import IngressConfig

    base, _ = app
    prompt, _ = long_prompt
    time.sleep(IngressConfig.model_fields["expert_cooldown_s"].default)
    body = {"model": "router", "messages": [{"role": "user", "content": prompt}], **LONG}
    reply = chat(base, **body, routing={"experts": ["math", "poet"]})
    # math first (it declares a skill; poet declares nothing), then the adapter: both run past the
    # expert timeout on this long answer, each attempt is cancelled in its engine.
    assert reply.status_code == 503
    message = reply.json()["error"]["message"]
    assert message.index("math: no answer within") < message.index("poet: no answer within"), message
    assert seconds_until_idle("general") < 0.75 and seconds_until_idle("math") < 0.75
