"""Load and faults through the ingress of a real app (Ray Serve + vLLM tiny-model experts on CPU).

Phases, one JSON line at the end:

1. ``baseline``: ``--requests`` routed requests at ``--concurrency`` (the yardstick);
2. ``kill_one``: the same load while one expert's replica actor is killed after a third of it:
   failed client requests must be 0 (fallback), and the replica comes back (Serve restarts it);
3. ``all_down``: every expert replica killed: requests get fast 503s (the router's cooldown),
   then the time until requests succeed again.

Per phase: requests, errors by status, p50/p99 ms, requests/s, answers per expert, fallbacks, and
whether every 200 was complete (content, finish_reason, usage, expert) - plus p50/p99 ratios to the
baseline.

    .venv/bin/python bench/load.py [--config configs/tiny_cpu.yaml] [--requests 2000] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from deployments.config import load_serve_config  # noqa: E402
from ops.launch import APP_NAME, run_local, stop_local  # noqa: E402
from tests.conftest import free_port  # noqa: E402

PROMPTS = ["What is 7 * 6?", "Name a river in Europe.", "Write a haiku about rain.", "What is DNA?"]


def complete(body: dict) -> bool:
    """A 200 reply that carries everything a client needs."""
    choice = (body.get("choices") or [{}])[0]
    return bool(
        body.get("expert")
        and isinstance(choice.get("message", {}).get("content"), str)
        and choice.get("finish_reason")
        and body.get("usage", {}).get("completion_tokens", 0) > 0
    )


async def load(base: str, n: int, concurrency: int, on_progress=None) -> dict:
    latencies, statuses, experts, fallbacks, incomplete = [], Counter(), Counter(), 0, 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal fallbacks, incomplete
        while not queue.empty():
            i = queue.get_nowait()
            body = {"messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], "max_tokens": 8}
            started = time.perf_counter()
            try:
                reply = await client.post(f"{base}/v1/chat/completions", json=body)
                status = reply.status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            latencies.append((time.perf_counter() - started) * 1e3)
            statuses[status] += 1
            if status == 200:
                data = reply.json()
                experts[data.get("expert")] += 1
                fallbacks += int(reply.headers.get("x-fallbacks", "0"))
                incomplete += not complete(data)
            if on_progress:
                on_progress(len(latencies))

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    wall = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": n,
        "ok": statuses.get(200, 0),
        "errors": {str(k): v for k, v in statuses.items() if k != 200},
        "incomplete_200s": incomplete,
        "p50_ms": round(statistics.median(latencies), 1),
        "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))], 1),
        "requests_per_s": round(n / wall, 1),
        "experts": dict(experts),
        "fallbacks": fallbacks,
    }


def replica_actors(expert: str | None = None) -> list[str]:
    """Names of the live Serve replica actors of the experts (or of one expert)."""
    import ray

    prefix = f"SERVE_REPLICA::{APP_NAME}#expert:{expert or ''}"
    named = ray.util.list_named_actors(all_namespaces=True)
    return [a["name"] for a in named if a["namespace"] == "serve" and a["name"].startswith(prefix)]


def kill(actors: list[str]) -> None:
    import ray

    for name in actors:
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=False)


def wait_for_replicas(experts: list[str], timeout_s: float = 600) -> float:
    """Seconds until every expert has a live replica again."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if all(replica_actors(e) for e in experts):
            return time.monotonic() - started
        time.sleep(1)
    raise TimeoutError("replicas did not come back")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=REPO / "configs/tiny_cpu.yaml")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    experts = load_serve_config(args.config).expert_names
    base = run_local(args.config, free_port(), num_cpus=8)
    try:
        asyncio.run(load(base, 64, 16))  # warm-up
        results = {"baseline": asyncio.run(load(base, args.requests, args.concurrency))}

        victim, killed = experts[0], threading.Event()

        def kill_a_third_in(done: int) -> None:
            if done >= args.requests // 3 and not killed.is_set():
                killed.set()
                threading.Thread(target=kill, args=(replica_actors(victim),)).start()

        results["kill_one"] = asyncio.run(load(base, args.requests, args.concurrency, kill_a_third_in))
        results["kill_one"]["killed"] = victim
        results["kill_one"]["replica_back_after_s"] = round(wait_for_replicas([victim]), 1)
        httpx.get(f"{base}/ready", timeout=60)

        kill(replica_actors())
        results["all_down"] = asyncio.run(load(base, 200, 16))
        started = time.monotonic()
        while (
            httpx.post(
                f"{base}/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "back?"}]},
                timeout=300,
            ).status_code
            != 200
        ):
            time.sleep(1)
        results["all_down"]["recovered_after_s"] = round(time.monotonic() - started, 1)
    finally:
        stop_local()
    base_p50, base_p99 = results["baseline"]["p50_ms"], results["baseline"]["p99_ms"]
    for name in ("kill_one", "all_down"):
        results[name]["p50_vs_baseline"] = round(results[name]["p50_ms"] / base_p50, 2)
        results[name]["p99_vs_baseline"] = round(results[name]["p99_ms"] / base_p99, 2)
    print(
        json.dumps(
            {"benchmark": "load", "config": args.config.name, "concurrency": args.concurrency, **results}
        )
    )


if __name__ == "__main__":
    main()
