"""Skewed traffic: quality-only versus load-aware routing when most queries suit one expert.

The default app (serve_config.yaml's expert names and shipped 1NN policy; tiny-model vLLM experts,
``tests.conftest.tiny_app_args``) with its shipped load-aware settings (``ingress.load``). The
traffic is real router_mix instructions, picked so that the shipped policy itself ranks one expert
first for ``--skew`` of them (the policy is asked offline about each candidate). At each concurrency
``--requests`` routed requests run with the shipped settings (``load_aware``) and as many with
``routing.load_weight: 0`` (``quality_only``: the policy's ranking, today's behaviour), alternating
in ``--rounds`` so machine drift hits both alike. Every answer is ``--max-tokens`` tokens long
(``ignore_eos``), so each request is the same work.

Each expert's engine runs at most ``--capacity`` sequences at once (vLLM ``max_num_seqs``), as a
GPU's memory bounds an expert's batch: beyond it requests queue in the engine, and that is the
saturation load-aware routing answers. Unbounded (``--capacity 0``: the tests' 64), both tiny
engines share this machine's two cores with the proxy and the clients, so a spilled request adds
no capacity, only contention — a measurement of the machine, not of the routing.

Per point: p50/p99 latency, requests/s, ``top_choice_share`` (answered by the policy's top-ranked
expert), ``quality_retained`` (the mean predicted quality of the answering experts over that of
the policy's top choices, both from ``x-routing-scores``), answers per expert, statuses. Prints
one JSON line ``{"benchmark": "skew", "points": [...], "saturation": {...}}`` and, with ``--out``,
writes it with a plot of p99 against concurrency.

    .venv/bin/python bench/skew.py [--concurrency 1,8,32,64] [--requests 200] [--out docs/results/skew]
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

from deployments.launch import run_local, stop_local  # noqa: E402
from tests.conftest import SHARED_DATA, free_port, tiny_app_args  # noqa: E402

POLICIES = {"quality_only": {"load_weight": 0}, "load_aware": {}}


def skewed_queries(args: dict, n: int, skew: float, seed: int = 0) -> tuple[list[str], str]:
    """``n`` router_mix instructions of which ``skew`` are ranked first for one expert by the
    shipped policy (the expert it prefers most often), the rest for the others; and that expert."""
    import random

    from router.config import PolicyConfig
    from router.policy import Message, build_policy

    policy = build_policy(PolicyConfig.model_validate(args["policy"]), [e["name"] for e in args["experts"]])
    with gzip.open(SHARED_DATA / "router_mix.jsonl.gz", "rt") as f:
        pool = [json.loads(line)["instruction"] for line in f]
    random.Random(seed).shuffle(pool)
    pool = [q for q in pool if len(q) < 400][: 20 * n]
    tops = [policy.route([Message("user", q)]).expert for q in pool]
    favourite = Counter(tops).most_common(1)[0][0]
    mine = [q for q, t in zip(pool, tops) if t == favourite]
    others = [q for q, t in zip(pool, tops) if t != favourite]
    k = round(skew * n)
    if len(mine) < k or len(others) < n - k:
        raise SystemExit(f"not enough queries for a {skew:.0%} skew among {len(pool)}")
    queries = mine[:k] + others[: n - k]
    random.Random(seed + 1).shuffle(queries)
    return queries, favourite


async def run_point(base: str, queries: list[str], concurrency: int, routing: dict, max_tokens: int) -> dict:
    """Every query once at ``concurrency``; latency, throughput and routing outcome."""
    latencies, statuses, experts, top, retained, best = [], Counter(), Counter(), 0, 0.0, 0.0
    todo = list(enumerate(queries))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal top, retained, best
        while todo:
            _, query = todo.pop()
            body = {
                "messages": [{"role": "user", "content": query}],
                "max_tokens": max_tokens,
                "ignore_eos": True,
                "routing": routing,
            }
            started = time.perf_counter()
            reply = await client.post(f"{base}/v1/chat/completions", json=body)
            latencies.append((time.perf_counter() - started) * 1e3)
            statuses[reply.status_code] += 1
            if reply.status_code != 200:
                continue
            expert = reply.headers["x-expert"]
            scores = {k: v for k, v in json.loads(reply.headers["x-routing-scores"]).items() if v is not None}
            favourite = max(scores, key=scores.get)
            experts[expert] += 1
            top += expert == favourite
            retained += scores[expert]
            best += scores[favourite]

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    wall = time.perf_counter() - started
    ok = statuses.get(200, 0)
    latencies.sort()
    return {
        "requests": len(queries),
        "statuses": {str(k): v for k, v in statuses.items()},
        "p50_ms": round(statistics.median(latencies), 1),
        "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))], 1),
        "requests_per_s": round(len(queries) / wall, 2),
        "top_choice_share": round(top / ok, 4) if ok else None,
        "quality_retained": round(retained / best, 4) if best else None,
        "experts": dict(experts),
    }


def merged(runs: list[dict]) -> dict:
    """One point from the rounds of one (concurrency, policy): latencies by the worse round's
    quantile would hide nothing, so quantiles and rates are averaged, counts summed."""
    out = {
        k: round(statistics.mean(r[k] for r in runs), 4 if "share" in k or "retained" in k else 1)
        for k in ("p50_ms", "p99_ms", "requests_per_s", "top_choice_share", "quality_retained")
    }
    out["requests"] = sum(r["requests"] for r in runs)
    out["experts"] = dict(sum((Counter(r["experts"]) for r in runs), Counter()))
    out["statuses"] = dict(sum((Counter(r["statuses"]) for r in runs), Counter()))
    return out


def plot(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for policy in POLICIES:
        mine = [p for p in points if p["policy"] == policy]
        ax.plot([p["concurrency"] for p in mine], [p["p99_ms"] for p in mine], marker="o", label=policy)
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_xscale("log", base=2)
    ax.set_title("Skewed traffic: p99 latency, quality-only vs load-aware routing")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--requests", type=int, default=200, help="per point and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skew", type=float, default=0.9)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--capacity", type=int, default=8, help="each engine's max_num_seqs (0: the tiny app's own)"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    app_args = tiny_app_args()
    if args.capacity:
        for expert in app_args["experts"]:
            expert["engine_kwargs"]["max_num_seqs"] = args.capacity
    queries, favourite = skewed_queries(app_args, args.requests, args.skew)
    base = run_local(app_args, free_port(), num_cpus=8)
    points = []
    try:
        asyncio.run(run_point(base, queries[:32], 8, {}, args.max_tokens))  # warm-up
        for concurrency in map(int, args.concurrency.split(",")):
            runs: dict[str, list[dict]] = {policy: [] for policy in POLICIES}
            for _ in range(args.rounds):
                for policy, routing in POLICIES.items():
                    runs[policy].append(
                        asyncio.run(run_point(base, queries, concurrency, routing, args.max_tokens))
                    )
                    print(f"concurrency {concurrency} {policy}: {runs[policy][-1]}", file=sys.stderr)
            points += [{"concurrency": concurrency, "policy": p, **merged(r)} for p, r in runs.items()]
        status = httpx.get(f"{base}/status", timeout=30).json()
    finally:
        stop_local()
    top = max(int(c) for c in args.concurrency.split(","))
    at = {p["policy"]: p for p in points if p["concurrency"] == top}
    qo, la = at["quality_only"], at["load_aware"]
    result = {
        "benchmark": "skew",
        "favourite": favourite,
        "skew": args.skew,
        "max_tokens": args.max_tokens,
        "capacity": args.capacity or None,
        "load_settings": status["load"]["settings"],
        "points": points,
        "saturation": {
            "concurrency": top,
            "p99_ratio": round(la["p99_ms"] / qo["p99_ms"], 3),
            "throughput_ratio": round(la["requests_per_s"] / qo["requests_per_s"], 3),
            "quality_retained": la["quality_retained"],
        },
    }
    line = json.dumps(result)
    print(line)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "skew.json").write_text(line + "\n")
        plot(points, args.out / "skew_p99.png")


if __name__ == "__main__":
    main()
