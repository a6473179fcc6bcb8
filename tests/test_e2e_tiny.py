"""End to end: real Ray Serve, real vLLM engines on CPU (tiny model), spoken to over HTTP."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import httpx
import pytest

from deployments.config import load_serve_config
from tests.conftest import TINY_APP

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

CONFIG = load_serve_config(Path(__file__).resolve().parent.parent / "configs/tiny_cpu.yaml")
SEED_KEYS = {"id", "object", "created", "choices", "usage", "expert"}


def direct_expert_answer(name: str, content: str) -> dict:
    """What the expert deployment itself answers, called by handle with no router in between."""
    from ray import serve

    from deployments.dispatch import expert_request
    from deployments.openai_api import ChatRequest

    expert = CONFIG.expert(name)
    request = ChatRequest.model_validate({"messages": [{"role": "user", "content": content}]})
    handle = serve.get_deployment_handle(f"expert:{name}", app_name=TINY_APP).options(stream=True)
    llm_request = expert_request(expert, request)

    async def call():
        async for reply in handle.chat.remote(llm_request):
            return reply

    reply = asyncio.run(call())
    return {"content": reply.choices[0].message.content, "prompt_tokens": reply.usage.prompt_tokens}


def assert_chat_completion(body: dict) -> None:
    assert body["object"] == "chat.completion" and body["id"] and body["created"] > 0
    [choice] = body["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["finish_reason"] in {"stop", "length"}
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert body["expert"] in CONFIG.expert_names


def test_predict_has_the_seed_shape(tiny_server):
    r = httpx.post(
        f"{tiny_server}/predict", json={"messages": [{"role": "user", "content": "Test"}]}, timeout=120
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == SEED_KEYS
    assert_chat_completion(body)
    assert r.headers["x-expert"] == body["expert"]


def test_the_named_expert_is_the_one_that_answered(tiny_server):
    """Routed replies match what that expert's own deployment answers (and not the other's)."""
    prompt = "Which expert are you?"
    direct = {name: direct_expert_answer(name, prompt) for name in CONFIG.expert_names}
    # The two experts see different prompts (beta has a profile), so they are told apart.
    assert direct["alpha"]["prompt_tokens"] != direct["beta"]["prompt_tokens"]
    seen = Counter()
    for _ in range(12):
        r = httpx.post(
            f"{tiny_server}/predict", json={"messages": [{"role": "user", "content": prompt}]}, timeout=120
        )
        body = r.json()
        name = body["expert"]
        seen[name] += 1
        assert body["choices"][0]["message"]["content"] == direct[name]["content"]
        assert body["usage"]["prompt_tokens"] == direct[name]["prompt_tokens"]
    assert set(seen) == {"alpha", "beta"}  # the random policy used both


@pytest.mark.parametrize("expert", ["alpha", "beta"])
def test_model_name_bypasses_routing(tiny_server, expert):
    for _ in range(3):
        r = httpx.post(
            f"{tiny_server}/v1/chat/completions",
            json={"model": expert, "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 4},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert_chat_completion(body)
        assert body["expert"] == body["model"] == expert
        assert body["usage"]["completion_tokens"] <= 4
        assert r.headers["x-routed"] == "false"


def test_chat_completions_routes_multi_turn_with_system_prompt(tiny_server):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "What is 2+2?"},
    ]
    r = httpx.post(
        f"{tiny_server}/v1/chat/completions", json={"model": "router", "messages": messages}, timeout=120
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert_chat_completion(body)
    assert body["model"] == body["expert"] and r.headers["x-routed"] == "true"
    # The whole conversation reached the expert: more prompt tokens than the last turn alone.
    alone = httpx.post(
        f"{tiny_server}/v1/chat/completions",
        json={"model": body["expert"], "messages": messages[-1:]},
        timeout=120,
    ).json()
    assert body["usage"]["prompt_tokens"] > alone["usage"]["prompt_tokens"]


def test_models_lists_router_and_experts(tiny_server):
    r = httpx.get(f"{tiny_server}/v1/models", timeout=30)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["router", *CONFIG.expert_names]
    beta = next(m for m in body["data"] if m["id"] == "beta")
    assert beta["price"] == {"input_per_1m": 1.0, "output_per_1m": 2.0}
    # One model's card, as the OpenAI SDK retrieves it; an unknown name is an OpenAI 404.
    from openai import NotFoundError, OpenAI

    client = OpenAI(base_url=f"{tiny_server}/v1", api_key="unused", max_retries=0)
    assert client.models.retrieve("beta").model_dump(exclude_none=True) == beta
    assert client.models.retrieve("router").id == "router"
    with pytest.raises(NotFoundError) as missing:
        client.models.retrieve("gamma")
    assert missing.value.body["code"] == "model_not_found" and "router, alpha, beta" in missing.value.message


def test_health_and_status(tiny_server):
    assert httpx.get(f"{tiny_server}/health", timeout=30).json() == {"status": "ok"}
    ready = httpx.get(f"{tiny_server}/ready", timeout=30)
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "experts": {name: "ok" for name in CONFIG.expert_names}}
    status = httpx.get(f"{tiny_server}/status", timeout=30).json()
    assert [e["name"] for e in status["experts"]] == CONFIG.expert_names
    assert isinstance(status["gpus"]["available"], bool)  # gpustat: no GPU here degrades cleanly


BAD_REQUESTS = [
    ("/v1/chat/completions", b"{not json", 400, "not valid JSON"),
    ("/predict", b'{"messages": [{"role": "user", "content": "x"}', 400, "not valid JSON"),
    ("/v1/chat/completions", b"{}", 400, "messages: Field required"),
    ("/predict", b'{"messages": []}', 400, "at least one message"),
    ("/predict", b'{"messages": [{"role": "wizard", "content": "x"}]}', 400, "messages[0].role: 'wizard'"),
    ("/predict", b'{"messages": [{"role": "system", "content": "x"}]}', 400, "non-empty user message"),
    ("/predict", b'{"messages": [{"role": "user", "content": 42}]}', 400, "messages[0].content: a string"),
    ("/predict", b'{"messages": ["hi"]}', 400, "messages[0].role: None"),
    ("/predict", b"[1, 2, 3]", 400, ""),
    (
        "/v1/chat/completions",
        b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": -5}',
        400,
        "max_tokens",
    ),
    (
        "/v1/chat/completions",
        b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}',
        404,
        "does not exist",
    ),
    (
        "/v1/chat/completions",
        b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 1000}',
        400,
        "expert",
    ),
    (
        "/predict",
        b'{"messages": [{"role": "user", "content": "x"}], "routing": {"experts": ["zeta"]}}',
        400,
        "zeta",
    ),
    (
        "/predict",
        b'{"messages": [{"role": "user", "content": "x"}], "routing": {"cost_weight": -1}}',
        400,
        "cost_weight",
    ),
]


def test_routing_options_restrict_the_candidates(tiny_server):
    for _ in range(5):
        r = httpx.post(
            f"{tiny_server}/predict",
            json={"messages": [{"role": "user", "content": "only beta"}], "routing": {"experts": ["beta"]}},
            timeout=120,
        )
        assert r.status_code == 200 and r.json()["expert"] == "beta"


@pytest.mark.parametrize("path, body, status, message", BAD_REQUESTS)
def test_bad_input_gets_openai_errors_and_the_server_keeps_serving(tiny_server, path, body, status, message):
    r = httpx.post(
        f"{tiny_server}{path}", content=body, headers={"content-type": "application/json"}, timeout=120
    )
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert message in error["message"] and error["type"]
    ok = httpx.post(
        f"{tiny_server}/predict",
        json={"messages": [{"role": "user", "content": "still there?"}]},
        timeout=120,
    )
    assert ok.status_code == 200


def test_unknown_route_and_method_are_4xx(tiny_server):
    assert httpx.get(f"{tiny_server}/nothing-here", timeout=30).status_code == 404
    r = httpx.get(f"{tiny_server}/predict", timeout=30)
    assert r.status_code == 405 and "error" in r.json()


def test_official_openai_client_works_unchanged(tiny_server):
    from openai import NotFoundError, OpenAI

    client = OpenAI(base_url=f"{tiny_server}/v1", api_key="unused")
    completion = client.chat.completions.create(
        model="router", messages=[{"role": "user", "content": "Hi"}], max_tokens=3
    )
    assert completion.choices[0].message.role == "assistant"
    assert completion.usage.completion_tokens > 0
    assert completion.model_extra["expert"] in CONFIG.expert_names
    assert [m.id for m in client.models.list().data] == ["router", *CONFIG.expert_names]
    with pytest.raises(NotFoundError):
        client.chat.completions.create(model="gpt-nope", messages=[{"role": "user", "content": "Hi"}])


def test_streaming_sends_openai_chunks_from_the_expert(tiny_server):
    body = {"model": "beta", "messages": [{"role": "user", "content": "Stream please"}], "max_tokens": 8}
    whole = httpx.post(f"{tiny_server}/v1/chat/completions", json=body, timeout=120).json()
    with httpx.stream(
        "POST",
        f"{tiny_server}/v1/chat/completions",
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
        timeout=120,
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-expert"] == "beta"
        events = [line[len("data: ") :] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["expert"] == "beta" and c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]  # greedy: the same answer, streamed
    usage = next(c["usage"] for c in reversed(chunks) if c.get("usage"))
    assert usage["completion_tokens"] == whole["usage"]["completion_tokens"]


def test_openai_client_streams_unchanged(tiny_server):
    from openai import OpenAI

    client = OpenAI(base_url=f"{tiny_server}/v1", api_key="unused")
    stream = client.chat.completions.create(
        model="router", messages=[{"role": "user", "content": "Hi"}], max_tokens=5, stream=True
    )
    chunks = list(stream)
    assert chunks and {c.model_extra["expert"] for c in chunks} <= set(CONFIG.expert_names)
    assert len({c.model_extra["expert"] for c in chunks}) == 1
    assert any(c.choices and c.choices[0].delta.content for c in chunks)


LITELLM_SCRIPT = """
import json, sys
import litellm

base, model = sys.argv[1], sys.argv[2]
ask = dict(model=f"openai/{model}", api_base=f"{base}/v1", api_key="unused", max_tokens=8, temperature=0,
           messages=[{"role": "user", "content": "Name a planet."}])
reply = litellm.completion(**ask)
chunks = list(litellm.completion(**ask, stream=True))
print(json.dumps({
    "content": reply.choices[0].message.content,
    "completion_tokens": reply.usage.completion_tokens,
    "streamed": "".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
}))
"""


def test_litellm_openai_provider_works_unchanged(tiny_server):
    """LiteLLM's OpenAI-compatible provider (in its own environment, `make clients`), plain and
    streaming, against the ingress; the answer equals what our own endpoint returns."""
    import os
    import subprocess

    client_python = Path(__file__).resolve().parent.parent / ".venv-clients/bin/python"
    assert client_python.exists(), "run `make clients` (make test does) to install LiteLLM"
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False"}
    run = subprocess.run(
        [str(client_python), "-c", LITELLM_SCRIPT, tiny_server, "alpha"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    body = {"model": "alpha", "messages": [{"role": "user", "content": "Name a planet."}], "max_tokens": 8}
    ours = httpx.post(
        f"{tiny_server}/v1/chat/completions", json={**body, "temperature": 0}, timeout=120
    ).json()
    assert out["content"] == out["streamed"] == ours["choices"][0]["message"]["content"]
    assert out["completion_tokens"] == ours["usage"]["completion_tokens"] > 0
