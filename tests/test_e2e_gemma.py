"""Slow end to end: `make serve`'s launcher serves the real Gemma-3-270M default (serve_config.yaml)
and the seed's request gets a real answer on port 2345."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from deployments.config import load_serve_config

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parent.parent
SEED_BODY = {"messages": [{"role": "user", "content": "Test"}]}
URL = "http://127.0.0.1:2345"


@pytest.fixture(scope="module")
def default_server():
    env = {**os.environ, "RAY_ADDRESS": "local", "RAY_AUTH_MODE": "disabled"}  # a cluster of its own
    proc = subprocess.Popen(
        [sys.executable, "-m", "ops.launch", "serve_config.yaml"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    started = time.monotonic()
    lines = []
    for line in proc.stdout:  # the launcher says when it is ready
        lines.append(line)
        if "is READY" in line:
            break
    else:
        pytest.fail("launcher exited before it was ready:\n" + "".join(lines[-60:]))
    print(f"default app ready in {time.monotonic() - started:.0f}s")
    yield proc
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=120)


def test_seed_request_gets_a_real_gemma_answer(default_server):
    r = httpx.post(f"{URL}/predict", json=SEED_BODY, headers={"Accept": "application/json"}, timeout=300)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"id", "object", "created", "choices", "usage", "expert"}
    assert body["expert"] in load_serve_config(REPO / "serve_config.yaml").expert_names
    assert body["choices"][0]["message"]["content"].strip()
    assert body["usage"]["completion_tokens"] > 0


def test_math_profile_solves_simple_arithmetic(default_server):
    """The math expert (Gemma + a step-by-step few-shot profile) gets an easy sum right."""
    r = httpx.post(
        f"{URL}/v1/chat/completions",
        json={
            "model": "math",
            "messages": [
                {"role": "user", "content": "Sara has 4 cats and gets 3 more. How many cats does she have?"}
            ],
        },
        timeout=300,
    )
    assert r.status_code == 200, r.text
    assert "7" in r.json()["choices"][0]["message"]["content"]


def test_answers_come_from_the_expert_the_shipped_router_picks(default_server):
    """The default app routes by the skills its experts declare: a clear math question goes to
    `math` and a clear general one to `general`, as the policy loaded here from the same config
    says."""
    from router.policy import Message, build_policy

    config = load_serve_config(REPO / "serve_config.yaml")
    policy = build_policy(config.policy, config.experts)
    picked = []
    for query in ("What is 17 times 23?", "Who wrote Hamlet?"):
        r = httpx.post(f"{URL}/predict", json={"messages": [{"role": "user", "content": query}]}, timeout=300)
        assert r.status_code == 200, r.text
        expected = policy.route([Message("user", query)]).expert
        assert r.json()["expert"] == expected == r.headers["x-expert"]
        picked.append(expected)
    assert picked == ["math", "general"]
