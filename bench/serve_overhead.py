"""What the router hop costs: latency through router -> expert versus the expert directly.

Starts the default app with tiny-model experts (``tests.conftest.tiny_app_args``: serve_config.yaml's
expert names and its shipped routing policy, real vLLM engines, ``max_tokens=1``) on a local cluster
and measures, on that same running app, interleaved in rounds:

- ``direct``: DeploymentHandle -> expert deployment (LLMServer.chat),
- ``via_router``: DeploymentHandle -> ingress deployment -> expert, the expert named (no decision),
- ``via_router_routed``: the same, but the shipped policy decides (``routing.experts`` limited to
  that expert, so every path reaches the same engine),
- ``http``: HTTP -> Serve proxy -> router ingress (policy decides) -> expert (what clients see),

at concurrency 1 and 32; prints one JSON object with p50/p99 per path, the router hop
(``via_router - direct`` at p50), the routed hop (``via_router_routed - direct``) and the ratios.
Goal: routed hop <= 4 ms p50.

    .venv/bin/python bench/serve_overhead.py [--requests 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from deployments.config import AppConfig  # noqa: E402
from deployments.dispatch import expert_request  # noqa: E402
from deployments.openai_api import ChatRequest  # noqa: E402
from ops.launch import APP_NAME, run_local, stop_local  # noqa: E402
from tests.conftest import tiny_app_args  # noqa: E402

BODY = {"messages": [{"role": "user", "content": "Say one word."}], "max_tokens": 1}


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = sorted(s * 1e3 for s in samples_s)
    return {
        "p50_ms": round(statistics.median(ms), 3),
        "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 3),
        "n": len(ms),
    }


async def run_concurrently(call, n: int, concurrency: int) -> list[float]:
    """Latency of each of ``n`` calls with ``concurrency`` in flight."""
    latencies: list[float] = []
    queue = iter(range(n))

    async def worker():
        for _ in queue:
            t0 = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def measure(base_url: str, config: AppConfig, n: int, rounds: int) -> dict:
    from ray import serve

    expert = config.experts[0]  # every path reaches this expert
    request = ChatRequest.model_validate({**BODY, "model": expert.name})
    routed = {**BODY, "routing": {"experts": [expert.name]}}
    routed_request = ChatRequest.model_validate(routed)
    llm_request = expert_request(expert, request)
    expert_handle = serve.get_deployment_handle(f"expert:{expert.name}", app_name=APP_NAME).options(
        stream=True
    )
    router_handle = serve.get_deployment_handle("ingress", app_name=APP_NAME)

    async def direct():
        async for _ in expert_handle.chat.remote(llm_request):
            pass

    async def via_router():
        response, _ = await router_handle.complete.remote(request)
        assert response["expert"] == expert.name

    async def via_router_routed():
        response, headers = await router_handle.complete.remote(routed_request)
        assert response["expert"] == expert.name and headers["x-routed"] == "true"

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=64)) as client:

        async def http():
            r = await client.post(f"{base_url}/v1/chat/completions", json=routed)
            r.raise_for_status()

        paths = {
            "direct": direct,
            "via_router": via_router,
            "via_router_routed": via_router_routed,
            "http": http,
        }
        for call in paths.values():  # warm up every path
            await run_concurrently(call, 20, 4)
        results = {}
        for concurrency in (1, 32):
            samples: dict[str, list[float]] = {name: [] for name in paths}
            for _ in range(rounds):  # interleave so drift hits every path alike
                for name, call in paths.items():
                    samples[name] += await run_concurrently(
                        call, n if concurrency == 1 else n * 2, concurrency
                    )
            stats = {name: percentiles(s) for name, s in samples.items()}
            d, r, p, h = (stats[k]["p50_ms"] for k in ("direct", "via_router", "via_router_routed", "http"))
            stats["router_hop_p50_ms"] = round(r - d, 3)
            stats["routed_hop_p50_ms"] = round(p - d, 3)
            stats["ratio_via_router_to_direct_p50"] = round(r / d, 3)
            stats["ratio_routed_to_direct_p50"] = round(p / d, 3)
            stats["ratio_http_to_direct_p50"] = round(h / d, 3)
            results[f"concurrency_{concurrency}"] = stats
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--requests", type=int, default=200, help="requests per path and round at concurrency 1"
    )
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app_args = tiny_app_args()
    base_url = run_local(app_args, port=port, num_cpus=8)
    try:
        results = asyncio.run(measure(base_url, AppConfig.parse(app_args), args.requests, args.rounds))
    finally:
        stop_local()
    hop = results["concurrency_1"]["routed_hop_p50_ms"]
    print(
        json.dumps(
            {
                "benchmark": "serve_overhead",
                "policy": app_args["policy"],
                "max_tokens": 1,
                "results": results,
                "goal": {"routed_hop_p50_ms_max": 4.0, "measured_concurrency_1": hop, "met": hop <= 4.0},
            }
        )
    )


if __name__ == "__main__":
    main()
