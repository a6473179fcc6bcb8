"""Production serving against the real app: a remote expert on a second real OpenAI server, fallback
from a dead endpoint, routing transparency, API keys, size caps, CORS and Prometheus metrics.

The session's cluster: its reference server (``reference_server``, a ray.serve.llm OpenAI app
with its own vLLM tiny engine, model ``tiny-ref``) is the "cloud" expert's endpoint; the router app
has a local tiny expert (alpha), the remote one (cloud) and one whose endpoint refuses connections
(dead), with the fixed policy putting dead first.
"""

from __future__ import annotations

import json
import os
import time

import httpx
import hypothesis
import pytest
import schemathesis

# Imported at collection, not lazily inside a test while Ray's threads run (see pyproject's addopts).
import schemathesis.specs.openapi.schemas  # noqa: F401
from pydantic import ValidationError
from schemathesis.generation.modes import GenerationMode

from deployments.openai_api import ChatRequest, TextCompletionRequest
from tests.conftest import REFERENCE_APP
from tests.wrong_types import CHAT_BASES, COMPLETION_BASES, OVER_HTTP, body_keys, names_the_field

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

KEYS = ("key-one", "key-two")
AUTH = {"Authorization": f"Bearer {KEYS[1]}"}
ORIGIN = "https://app.example"


def router_args(reference: dict) -> dict:
    tiny = {
        "model": "builtin:tiny-llama",
        "num_cpus": 0.5,
        "engine_kwargs": {"max_model_len": 512, "kv_cache_memory_bytes": 33554432, "max_num_seqs": 32},
        "autoscaling": {"min_replicas": 1, "max_replicas": 1},
        "sampling": {"max_tokens": 8, "temperature": 0.0},
    }
    return {
        "policy": {"name": "fixed", "args": {"expert": "dead"}},
        "ingress": {
            "num_cpus": 0.1,
            "max_attempts": 2,
            "expert_timeout_s": 30,
            "env_vars": {"ER_KEYS": ",".join(KEYS), "REMOTE_KEY": "not-checked-by-the-remote"},
            "security": {
                "api_keys_env": "ER_KEYS",
                "max_body_bytes": 65536,
                "max_messages": 50,
                "max_message_chars": 5000,
                "max_tokens": 64,
                "cors_origins": [ORIGIN],
            },
        },
        "experts": [
            {
                "name": "dead",
                "model": "nothing",
                "endpoint": {"base_url": "http://127.0.0.1:9/v1", "timeout_s": 2},
            },
            {"name": "alpha", **tiny, "price": {"input_per_1m": 0.1, "output_per_1m": 0.2}},
            {
                "name": "cloud",
                "model": reference["model"],
                "endpoint": {"base_url": reference["url"], "api_key_env": "REMOTE_KEY"},
                "price": {"input_per_1m": 3.0, "output_per_1m": 15.0},
                "max_in_flight": 1,
                "sampling": {"max_tokens": 8, "temperature": 0.0},
            },
        ],
    }


APP = "production"
"""This module's router app (its metrics are told apart by their ``application`` tag)."""


@pytest.fixture(scope="module")
def server(serve_cluster, reference_server):
    from deployments.app import build_app
    from deployments.config import AppConfig

    args = router_args(reference_server)
    with serve_cluster.apps(APP, "all-remote") as cluster:
        cluster.run(build_app(args), APP, "/")
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                up = httpx.post(
                    f"{cluster.base}/v1/chat/completions",
                    json=ask("hi", model="cloud"),
                    headers=AUTH,
                    timeout=30,
                )
                if up.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        yield {
            "base": cluster.base,
            "metrics": cluster.metrics,
            "config": AppConfig.parse(args),
            "reference": reference_server,
        }


def ask(content: str, **extra) -> dict:
    return {"messages": [{"role": "user", "content": content}], **extra}


def test_remote_expert_answers_as_its_own_server_does(server):
    base = server["base"]
    reply = httpx.post(
        f"{base}/v1/chat/completions", json=ask("Name a color.", model="cloud"), headers=AUTH, timeout=60
    )
    assert reply.status_code == 200 and reply.json()["expert"] == "cloud"
    reference = server["reference"]
    direct = httpx.post(
        f"{reference['url']}/chat/completions",
        json={**ask("Name a color."), "model": reference["model"], "max_tokens": 8, "temperature": 0.0},
        timeout=60,
    ).json()
    assert reply.json()["choices"][0]["message"]["content"] == direct["choices"][0]["message"]["content"]
    assert reply.json()["usage"]["prompt_tokens"] == direct["usage"]["prompt_tokens"]

    text, experts = "", set()
    with httpx.stream(
        "POST",
        f"{base}/v1/chat/completions",
        json=ask("Name a color.", model="cloud", stream=True),
        headers=AUTH,
    ) as events:
        assert events.headers["x-expert"] == "cloud"
        for line in events.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                experts.add(chunk["expert"])
                text += "".join((c.get("delta") or {}).get("content") or "" for c in chunk.get("choices", []))
    assert experts == {"cloud"} and text == direct["choices"][0]["message"]["content"]


def test_a_dead_expert_falls_back_and_the_reply_explains_the_routing(server):
    body = ask("What is 2 + 2?", routing={"explain": True})
    reply = httpx.post(f"{server['base']}/v1/chat/completions", json=body, headers=AUTH, timeout=60)
    assert reply.status_code == 200, reply.text
    out = reply.json()
    assert out["expert"] == "alpha" and reply.headers["x-fallbacks"] == "1"
    routing = out["routing"]
    assert routing["expert"] == "alpha" and routing["routed"] is True
    assert set(routing["scores"]) == {"dead", "alpha", "cloud"} and routing["scores"]["dead"] == 1.0
    assert len(routing["fallbacks"]) == 1 and "dead" in routing["fallbacks"][0]
    price = server["config"].expert("alpha").price
    usage = out["usage"]
    assert routing["cost_usd"] == pytest.approx(
        price.cost(usage["prompt_tokens"], usage["completion_tokens"])
    )
    assert float(reply.headers["x-cost-usd"]) == pytest.approx(routing["cost_usd"], rel=1e-6)
    assert json.loads(reply.headers["x-routing-scores"]) == routing["scores"]
    assert (
        "routing"
        not in httpx.post(f"{server['base']}/v1/chat/completions", json=ask("hi"), headers=AUTH).json()
    )

    only_cloud = ask("hi", routing={"experts": ["cloud"]})
    assert (
        httpx.post(f"{server['base']}/predict", json=only_cloud, headers=AUTH, timeout=60).json()["expert"]
        == "cloud"
    )


def test_api_keys_are_required_except_on_probes(server):
    base = server["base"]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEYS[0]}"}):
        reply = httpx.post(f"{base}/predict", json=ask("hi"), headers=headers, timeout=30)
        assert reply.status_code == 401 and reply.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{base}/v1/models", timeout=30).status_code == 401
    assert httpx.get(f"{base}/v1/models/router", timeout=30).status_code == 401
    assert httpx.get(f"{base}/health", timeout=30).status_code == 200
    for key in KEYS:
        headers = {"Authorization": f"Bearer {key}"}
        assert httpx.post(f"{base}/predict", json=ask("hi"), headers=headers, timeout=60).status_code == 200


@pytest.mark.parametrize(
    "body, status, phrase",
    [
        (ask("hi", messages=[{"role": "user", "content": "x"}] * 51), 400, "at most 50"),
        (ask("y" * 5001), 400, "at most 5000"),
        (ask("hi", max_tokens=65), 400, "at most 64"),
        (ask("z" * 70000), 413, "over 65536 bytes"),
    ],
)
def test_caps_and_body_size_give_clear_errors(server, body, status, phrase):
    reply = httpx.post(f"{server['base']}/v1/chat/completions", json=body, headers=AUTH, timeout=30)
    assert reply.status_code == status and phrase in reply.json()["error"]["message"], reply.text
    assert (
        httpx.post(f"{server['base']}/predict", json=ask("hi"), headers=AUTH, timeout=60).status_code == 200
    )


def test_a_chunked_body_over_the_limit_is_refused(server):
    def chunks():
        for _ in range(20):
            yield b"x" * 8192

    reply = httpx.post(
        f"{server['base']}/v1/chat/completions",
        content=chunks(),
        headers={**AUTH, "Content-Type": "application/json"},
        timeout=30,
    )
    assert reply.status_code == 413 and "over 65536 bytes" in reply.json()["error"]["message"]


def test_cors_only_for_configured_origins(server):
    def preflight(origin: str) -> httpx.Response:
        headers = {"Origin": origin, "Access-Control-Request-Method": "POST"}
        return httpx.options(f"{server['base']}/v1/chat/completions", headers=headers, timeout=30)

    assert preflight(ORIGIN).headers.get("access-control-allow-origin") == ORIGIN
    assert "access-control-allow-origin" not in preflight("https://evil.example").headers


def test_prometheus_metrics_count_requests_tokens_fallbacks_and_errors(server):
    httpx.post(f"{server['base']}/predict", json=ask("count me"), headers=AUTH, timeout=60)
    httpx.post(f"{server['base']}/predict", json=ask("no key"), timeout=30)
    wanted = {
        "ray_expert_router_requests_total{": 'expert="alpha"',
        "ray_expert_router_tokens_total{": 'kind="completion"',
        "ray_expert_router_routing_latency_ms_bucket{": "le=",
        "ray_expert_router_fallbacks_total{": 'expert="dead"',
        "ray_expert_router_errors_total{": 'kind="authentication_error"',
    }

    def missing(text: str) -> list[str]:
        lines = text.splitlines()
        ours = [line for line in lines if f'application="{APP}"' in line]  # not other modules' apps
        return [m for m, tag in wanted.items() if not any(x.startswith(m) and tag in x for x in ours)]

    deadline, text = time.monotonic() + 90, ""
    while time.monotonic() < deadline:
        text = httpx.get(server["metrics"], timeout=10).text
        if not missing(text):
            break
        time.sleep(3)
    assert not missing(text), missing(text)
    assert "count me" not in text and os.environ.get("ER_KEYS") is None


CHAT_BODIES = [
    ('{"messages":[{"role":"user","content":"\\ud800 lone surrogate"}]}', 400),
    ('{"messages":[{"role":"user","content":"nul \\u0000, rtl \\u202e, \\ud83d\\ude00, \\u4e2d"}]}', 200),
    ('{"messages":[{"role":"user","content":"hi"}],"unknown_field":{"nested":[1,2,3]}}', 200),
    ('{"messages":[{"role":"user","content":[{"type":"text","text":"parts"}]}]}', 200),
    # ~370 KB: over this app's body limit (the message cap is checked in the caps test)
    ('{"messages":' + json.dumps([{"role": "user", "content": "x"}] * 10000) + "}", 413),
    ('{"messages":[{"role":"user","content":"hi"}],"max_tokens":-5}', 400),
    ('{"messages":[{"role":"user","content":"hi"}],"max_tokens":99999999999999999999}', 400),
    ('{"messages":[{"role":"user","content":"hi"}],"temperature":"hot"}', 400),
    # The whole OpenAI request: agent turns pass, what no engine takes is refused up front.
    (
        '{"messages":[{"role":"user","content":"2+3?"},{"role":"assistant","content":null,'
        '"tool_calls":[{"id":"c","type":"function","function":{"name":"add","arguments":"{}"}}]},'
        '{"role":"tool","tool_call_id":"c","content":"5"}]}',
        200,
    ),
    ('{"messages":[{"role":"user","content":"hi"}],"n":2,"temperature":0.7}', 200),
    ('{"messages":[{"role":"user","content":"hi"}],"n":99,"temperature":0.7}', 400),
    (
        '{"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"parameters":[]}}]}',
        400,
    ),
    # parameters that are no JSON schema: 400 even with tool_choice "none", where no engine reads them
    (
        '{"messages":[{"role":"user","content":"hi"}],"tool_choice":"none",'
        '"tools":[{"type":"function","function":{"name":"f","parameters":{"type":5}}}]}',
        400,
    ),
    ('{"messages":[{"role":"user","content":"hi"}],"tool_choice":"required"}', 400),
    ('{"messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_schema"}}', 400),
    ('{"messages":[{"role":"user","content":"hi"}],"top_logprobs":2}', 400),
    ('{"messages":[{"role":"tool","tool_call_id":"c","content":"5"}]}', 400),
    ('{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:,"}}]}]}', 400),
    ("[]", 400),
    ('"just a string"', 400),
    ("{", 400),
    # A conversation without a user turn: routing has nothing to read; named, the expert takes it.
    ('{"messages":[{"role":"system","content":"x"}]}', 400),
    ('{"messages":[{"role":"system","content":"x"}],"model":"alpha"}', 200),
]
"""Bodies for /v1/chat/completions, each with its status."""
COMPLETION_BODIES = [
    ('{"prompt":"\\ud800 lone surrogate"}', 400),
    ('{"prompt":"nul \\u0000, rtl \\u202e, \\ud83d\\ude00, \\u4e2d"}', 200),
    ('{"prompt":"hi","unknown_field":{"nested":[1,2,3]}}', 200),
    ('{"prompt":[1,2,3],"model":"alpha"}', 200),  # token ids go to an expert named directly...
    ('{"prompt":[1,2,3]}', 400),  # ...routing reads text
    ('{"prompt":""}', 400),
    ('{"prompt":{"not":"a prompt"}}', 400),
    ('{"prompt":' + json.dumps("x" * 70000) + "}", 413),
    ('{"prompt":"hi","max_tokens":-5}', 400),
    ('{"prompt":"hi","max_tokens":99999999999999999999}', 400),
    ('{"prompt":"hi","temperature":"hot"}', 400),
    ('{"prompt":"hi","n":99,"temperature":0.7}', 400),
    ('{"prompt":"hi","logprobs":99}', 400),  # over the engine's max_logprobs: the engine's 400
    ('{"prompt":"hi","stream_options":{"include_usage":true}}', 400),
    ('{"prompt":"hi","response_format":{"type":"json_schema"}}', 400),
    ('{"prompt":"hi","model":"nobody"}', 404),
    ("[]", 400),
    ('"just a string"', 400),
    ("{", 400),
]
"""Bodies for /v1/completions, each with its status."""


@pytest.mark.parametrize(
    "path, raw, status",
    [("/v1/chat/completions", *case) for case in CHAT_BODIES]
    + [("/v1/completions", *case) for case in COMPLETION_BODIES],
)
def test_hostile_bodies_get_their_own_status_and_the_server_keeps_serving(server, path, raw, status):
    reply = httpx.post(
        f"{server['base']}{path}",
        content=raw.encode("utf-8", "surrogatepass"),
        headers={**AUTH, "Content-Type": "application/json"},
        timeout=60,
    )
    assert reply.status_code == status, reply.text
    if status == 200:
        choice = reply.json()["choices"][0]
        assert choice["message"]["role"] == "assistant" if "chat" in path else isinstance(choice["text"], str)
    else:
        error = reply.json()["error"]
        assert error["message"] and error["type"] == "invalid_request_error"
    assert (
        httpx.post(
            f"{server['base']}/predict", json=ask("still there?"), headers=AUTH, timeout=60
        ).status_code
        == 200
    )


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_fuzzed_requests_never_get_a_5xx(server, mode):
    """Requests generated by schemathesis from the ingress's own OpenAPI schema, fitting it
    (positive) and violating it (negative): an answer or a clear 4xx, never a 5xx or a hang;
    /ready may say 503 (the dead expert is really down)."""
    schema = schemathesis.openapi.from_url(f"{server['base']}/openapi.json", headers=AUTH)
    settings = hypothesis.settings(
        max_examples=20, deadline=None, database=None, suppress_health_check=list(hypothesis.HealthCheck)
    )
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {
        "/predict",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
    }
    for operation in operations:
        if mode == "negative" and not list(operation.body):
            continue  # nothing to violate in a request without a body

        @settings
        @hypothesis.given(case=operation.as_strategy(GenerationMode(mode)))
        def check(case):
            response = case.call(headers=AUTH, timeout=60)
            if case.path == "/ready":
                assert response.status_code in (200, 503)
                return
            assert response.status_code < 500, (case.method, case.path, case.body, response.text)
            if response.status_code >= 400:
                assert response.json()["error"]["message"]

        check()


def test_an_expert_at_its_max_in_flight_answers_429_with_retry_after_and_status_shows_its_load(server):
    """cloud keeps at most one request in flight from this router: concurrent requests naming it
    beyond that get 429 + Retry-After (OpenAI-style), the others answer; /status shows the live
    load; Prometheus has the overload counter and the load gauges."""
    import asyncio

    long = ask("count slowly", model="cloud", max_tokens=64, ignore_eos=True)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(headers=AUTH, timeout=120) as client:
            return await asyncio.gather(
                *(client.post(f"{server['base']}/v1/chat/completions", json=long) for _ in range(6))
            )

    replies = asyncio.run(burst())
    statuses = sorted(r.status_code for r in replies)
    assert set(statuses) == {200, 429} and statuses.count(200) >= 1, statuses
    refused = next(r for r in replies if r.status_code == 429)
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "experts_overloaded" and "max_in_flight" in refused.text
    status = httpx.get(f"{server['base']}/status", headers=AUTH, timeout=30).json()
    cloud = status["load"]["experts"]["cloud"]
    assert cloud["in_flight"] == 0 and cloud["max_in_flight"] == 1 and cloud["answered"] >= 1
    assert cloud["ttft_ms"] > 0 and status["load"]["settings"]["load_weight"] == 1.0
    wanted = (
        "ray_expert_router_overloaded_total",
        "ray_expert_router_in_flight{",
        "ray_expert_router_ttft_ms{",
    )
    deadline, text = time.monotonic() + 90, ""
    while time.monotonic() < deadline:
        text = httpx.get(server["metrics"], timeout=10).text
        ours = [line for line in text.splitlines() if f'application="{APP}"' in line]
        if all(any(line.startswith(w) for line in ours) for w in wanted):
            break
        time.sleep(3)
    assert all(any(line.startswith(w) for line in ours) for w in wanted), wanted


def test_all_experts_stopped_give_fast_503s_then_recover_when_they_return(server):
    """A second router app whose experts are all remote (cloud, dead). The cloud expert's server
    goes away (its app deleted): every expert is down, so routed requests get 503s, the repeated
    ones at once (cooldown); the other app keeps serving; when the server is back, it answers again."""
    from ray import serve
    from ray.serve.llm import build_openai_app

    from deployments.app import build_app

    args = router_args(server["reference"])
    args["experts"] = [e for e in args["experts"] if "endpoint" in e]
    args["policy"] = {"name": "random", "args": {"seed": 0}}
    serve.run(build_app(args), name="all-remote", route_prefix="/all-remote")
    url = f"{server['base']}/all-remote/v1/chat/completions"
    assert httpx.post(url, json=ask("hi"), headers=AUTH, timeout=60).json()["expert"] == "cloud"

    serve.delete(REFERENCE_APP)
    try:
        first = httpx.post(url, json=ask("hi"), headers=AUTH, timeout=60)
        assert first.status_code == 503 and first.json()["error"]["code"] == "experts_unavailable"
        started = time.perf_counter()
        again = httpx.post(url, json=ask("hi"), headers=AUTH, timeout=60)
        assert again.status_code == 503 and "retry in" in again.json()["error"]["message"]
        assert time.perf_counter() - started < 1.0  # fast: no expert is even called
        main = f"{server['base']}/v1/chat/completions"
        assert httpx.post(main, json=ask("others still answer"), headers=AUTH, timeout=60).status_code == 200
    finally:  # the session's reference server comes back, whatever happened above
        reference = build_openai_app({"llm_configs": [server["reference"]["llm_config"]]})
        serve.run(reference, name=REFERENCE_APP, route_prefix=f"/{REFERENCE_APP}")
    deadline = time.monotonic() + 300
    while (reply := httpx.post(url, json=ask("back?"), headers=AUTH, timeout=60)).status_code != 200:
        assert time.monotonic() < deadline, reply.text
        time.sleep(1)
    assert reply.json()["expert"] == "cloud"


ROUTES = {
    "/v1/chat/completions": (ChatRequest, CHAT_BASES[:2]),
    "/predict": (ChatRequest, CHAT_BASES[:2]),
    "/v1/completions": (TextCompletionRequest, COMPLETION_BASES),
}
"""Each route, its request model and the valid bodies a field is changed in, in turn: routed; bypassed
to alpha and streamed (the tool-calling base is checked in-process: this app's tool-capable experts
are remote ones)."""


def test_every_field_of_every_json_type_gets_an_answer_or_a_400_naming_it_on_every_route(server):
    """Over HTTP, on each route: every field either request model declares (so the router's reads of
    extra fields are covered too: ``max_completion_tokens`` on /v1/completions answered 500) x every
    JSON type (``OVER_HTTP``; in-process, arrays of every type too): an answer or an OpenAI error,
    never a 5xx. A 400 of the router's names the field in
    ``param``; an engine's refusal (``expert '...': ...``) passes on the engine's param, or none. A
    value the route's model accepts in-process (where the router's reads of it are checked) is sent
    once, on its own route (/predict shares the chat model and path): engines' answers are the slow
    part."""
    from concurrent.futures import ThreadPoolExecutor

    keys = list(dict.fromkeys([*body_keys(ChatRequest), *body_keys(TextCompletionRequest)]))
    cases = []
    for path, (model, bases) in ROUTES.items():
        for k, key in enumerate(keys):
            for v, value in enumerate(OVER_HTTP):
                body = {**bases[(k * len(OVER_HTTP) + v) % len(bases)], key: value}
                try:
                    model.model_validate(body)
                except ValidationError:
                    cases.append((path, key, value, body))
                    continue
                if path != "/predict" or key not in body_keys(model):
                    cases.append((path, key, value, body))
    client = httpx.Client(
        base_url=server["base"], headers=AUTH, timeout=60, limits=httpx.Limits(max_connections=4)
    )

    def send(case: tuple) -> str | None:
        path, key, value, body = case
        reply = client.post(path, json=body)
        if reply.status_code == 200:
            return None
        error = reply.json().get("error") or {}
        param, message = error.get("param") or "", error.get("message") or ""
        named = names_the_field(param, key) or (
            value is None and any(names_the_field(param, o) for o in body)
        )
        relayed = message.startswith("expert '") and (named or not param)
        expected = (
            reply.status_code == 400 and (named or relayed) or reply.status_code == 404 and param == "model"
        )
        return None if expected and message else f"{path} {key}={value!r}: {reply.status_code} {reply.text}"

    started = time.monotonic()
    with client, ThreadPoolExecutor(4) as pool:
        failures = [failure for failure in pool.map(send, cases) if failure]
    print("HTTP sweep", len(cases), time.monotonic() - started)
    assert not failures, f"{len(failures)} of {len(cases)} bodies:\n" + "\n".join(failures[:30])
