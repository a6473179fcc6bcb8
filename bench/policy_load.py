"""Serving with the shipped routing policy versus the Random policy, in one run.

The default app (serve_config.yaml: its expert names and its routing policy, the 1NN router on
ONNX int8) with tiny-model vLLM experts (``tests.conftest.tiny_app_args``), then the same app with
the Random policy, alternating in ``--rounds`` so machine drift hits both alike. Per policy:
routed requests/s, p50/p99 latency and the ``x-routing-ms`` p50/p99 at ``--concurrency`` (and at
concurrency 1), plus the latency of a ``/health`` probe polled beside the load (a blocked event
loop shows there first), and who decided: the policy, or under overload
(``ingress.decisions.max_queue_ms``) the fast tier learned from it or the prior (``x-routing-tier``);
``decided_by_model`` counts the first two (per query). Queries are real router_mix
instructions (encoder cost grows with length); ``max_tokens=1`` keeps the experts' share small.
Prints one JSON line with ratios shipped/random.
Goals: requests/s >= 0.95x Random's; /health p99 <= 1.25x Random's.

``--layout router-core`` pins every engine to the second core, leaving the first to the HTTP proxy
and the router (as on a cluster, where the router ingress runs on CPU nodes of its own).

    .venv/bin/python bench/policy_load.py [--requests 600] [--concurrency 64] [--rounds 2] [--layout shipped]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import logging
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ops.launch import APP_NAME, run_local, stop_local, wait_until_ready  # noqa: E402
from tests.conftest import SHARED_DATA, free_port, tiny_app_args  # noqa: E402


def quantiles(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)
    return {"p50": round(statistics.median(ms), 2), "p99": round(ms[int(0.99 * (len(ms) - 1))], 2)}


async def phase(base: str, queries: list[str], n: int, concurrency: int) -> dict:
    """``n`` routed requests at ``concurrency``, a /health probe every 20 ms beside them."""
    latencies, routing, health, statuses, experts = [], [], [], Counter(), Counter()
    tiers: Counter[str] = Counter()
    todo = iter(range(n))
    limits = httpx.Limits(max_connections=concurrency + 2)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:

        async def worker() -> None:
            for i in todo:
                body = {"messages": [{"role": "user", "content": queries[i % len(queries)]}], "max_tokens": 1}
                t0 = time.perf_counter()
                reply = await client.post(f"{base}/v1/chat/completions", json=body)
                latencies.append((time.perf_counter() - t0) * 1e3)
                statuses[reply.status_code] += 1
                if reply.status_code == 200:
                    routing.append(float(reply.headers["x-routing-ms"]))
                    experts[reply.headers["x-expert"]] += 1
                    tiers[reply.headers.get("x-routing-tier", "policy")] += 1

        async def probe(stop: asyncio.Event) -> None:
            while not stop.is_set():
                t0 = time.perf_counter()
                await client.get(f"{base}/health")
                health.append((time.perf_counter() - t0) * 1e3)
                await asyncio.sleep(0.02)

        stop = asyncio.Event()
        prober = asyncio.create_task(probe(stop))
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
        stop.set()
        await prober
    return {
        "wall_s": wall,
        "n": n,
        "latency_ms": latencies,
        "routing_ms": routing,
        "health_ms": health,
        "errors": sum(v for k, v in statuses.items() if k != 200),
        "experts": experts,
        "tiers": tiers,
    }


def summarize(runs: list[dict]) -> dict:
    pooled = {k: [x for r in runs for x in r[k]] for k in ("latency_ms", "routing_ms", "health_ms")}
    experts = sum((r["experts"] for r in runs), Counter())
    tiers = sum((r["tiers"] for r in runs), Counter())
    answered = sum(tiers.values()) or 1
    return {
        "requests": sum(r["n"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "requests_per_s": round(sum(r["n"] for r in runs) / sum(r["wall_s"] for r in runs), 1),
        # per query by a trained model: the policy, or the fast tier that learned it (not the prior)
        "decided_by_model": round((tiers["policy"] + tiers["fast"]) / answered, 3),
        "decided_by": {tier: round(tiers[tier] / answered, 3) for tier in ("policy", "fast", "prior")},
        "latency_ms": quantiles(pooled["latency_ms"]),
        "x_routing_ms": quantiles(pooled["routing_ms"]),
        "health_ms": quantiles(pooled["health_ms"]),
        "health_probes": len(pooled["health_ms"]),
        "experts": dict(experts),
    }


def deploy(args: dict, base: str) -> None:
    """Replace the running app with ``args`` (Serve updates it in place) and wait until it serves."""
    from ray import serve

    from deployments.app import build_app

    serve.run(build_app(args), name=APP_NAME, route_prefix="/", blocking=False)
    wait_until_ready(base)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=600, help="requests per phase at --concurrency")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--single", type=int, default=100, help="requests per phase at concurrency 1")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--layout", choices=["shipped", "router-core"], default="shipped")
    parser.add_argument(
        "--max-queue-ms", type=float, help="override ingress.decisions.max_queue_ms (0: never shed)"
    )
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    records = [json.loads(line) for line in gzip.open(SHARED_DATA / "router_mix.jsonl.gz", "rt")]
    queries = [r["instruction"] for r in records if r["split"] == "test"][:500]
    random_policy = {"name": "random", "args": {"seed": 0}}
    apps = {"shipped": tiny_app_args(), "random": tiny_app_args(policy=random_policy)}
    if args.max_queue_ms is not None:
        for app in apps.values():
            app["ingress"]["decisions"] = {"max_queue_ms": args.max_queue_ms}
    if args.layout == "router-core":
        for app in apps.values():
            for expert in app["experts"]:
                expert["env_vars"] = {**expert["env_vars"], "VLLM_CPU_OMP_THREADS_BIND": "1"}
    runs: dict[str, dict[int, list[dict]]] = {name: {args.concurrency: [], 1: []} for name in apps}
    base = run_local(apps["shipped"], free_port(), num_cpus=8)
    try:
        for round_ in range(args.rounds):
            for name, app_args in apps.items():
                if round_ or name != "shipped":
                    deploy(app_args, base)
                asyncio.run(phase(base, queries, 64, 16))  # warm-up
                runs[name][args.concurrency].append(
                    asyncio.run(phase(base, queries, args.requests, args.concurrency))
                )
                runs[name][1].append(asyncio.run(phase(base, queries, args.single, 1)))
                print(f"round {round_ + 1}/{args.rounds}: {name} done", file=sys.stderr, flush=True)
    finally:
        stop_local()
    result: dict = {
        "benchmark": "policy_load",
        "layout": args.layout,
        "max_queue_ms": args.max_queue_ms,
        "policy": apps["shipped"]["policy"],
        "max_tokens": 1,
    }
    for concurrency in (args.concurrency, 1):
        shipped, random_ = (summarize(runs[name][concurrency]) for name in ("shipped", "random"))
        result[f"concurrency_{concurrency}"] = {
            "shipped": shipped,
            "random": random_,
            "ratio_requests_per_s": round(shipped["requests_per_s"] / random_["requests_per_s"], 3),
            "ratio_health_p99": round(shipped["health_ms"]["p99"] / random_["health_ms"]["p99"], 3),
            "ratio_latency_p50": round(shipped["latency_ms"]["p50"] / random_["latency_ms"]["p50"], 3),
        }
    top = result[f"concurrency_{args.concurrency}"]
    result["goals"] = {
        "requests_per_s_ratio_min": 0.95,
        "health_p99_ratio_max": 1.25,
        "met": top["ratio_requests_per_s"] >= 0.95 and top["ratio_health_p99"] <= 1.25,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
