"""Skewed traffic: quality-only versus load-aware routing when most queries suit one expert.

The default app (serve_config.yaml's expert names and shipped routing policy; tiny-model vLLM experts,
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

Two kinds of load. Closed loop (``--concurrency``): C clients, each sending its next query when
its last is answered, so mean latency = C / throughput (Little's law) and a policy lowers the mean
latency only as much as it raises throughput: with two equal experts and a 90% skew at most ~1.8x
(quality-only ~1/0.9 of one engine, load-aware two engines), i.e. no lower than ~0.55x; the law
bounds the mean, not p99.
Open loop (``--rates``): queries arrive as a Poisson process at R per second regardless of the
answers, as independent users send them; past one expert's capacity its queue, and quality-only
latency, grow for as long as the burst lasts, while load-aware routing can still keep up. Latency
counts from each query's arrival.

Per point: p50/p99 latency, requests/s, ``top_choice_share`` (answered by the policy's top-ranked
expert), ``quality_retained`` (the mean predicted quality of the answering experts over that of
the policy's top choices, both from ``x-routing-scores``), ``shed_share`` (decisions the
router's overload guard made from its recent average scores, ``x-routing-shed``: the policy's own
top choice is then unknown, so the two before are over the other answers), answers per expert,
statuses (``error``: no HTTP answer). Policies take turns to run first. Prints
one JSON line ``{"benchmark": "skew", "points": [...], "saturation": {...}, "open_loop_points":
[...], "open_loop_ratios": [...]}`` and, with ``--out``, writes it with plots of p99 against
concurrency and against the offered rate.

    .venv/bin/python bench/skew.py [--concurrency 1,8,32,64] [--rates 2,5,7,9] [--requests 200]
        [--out docs/results/skew]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import logging
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ops.launch import run_local, stop_local  # noqa: E402
from tests.conftest import SHARED_DATA, free_port, tiny_app_args  # noqa: E402

POLICIES = {"quality_only": {"load_weight": 0}, "load_aware": {}}


def skewed_queries(args: dict, n: int, skew: float, seed: int = 0) -> tuple[list[str], str]:
    """``n`` router_mix instructions of which ``skew`` are ranked first for one expert by the
    shipped policy (the expert it prefers most often), the rest for the others; and that expert."""
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


class Tally:
    """The outcome of one run: latencies, statuses, and which experts answered versus the policy's
    first choice (from ``x-expert`` / ``x-routing-scores``)."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.statuses: Counter = Counter()
        self.experts: Counter = Counter()
        self.decided, self.shed, self.top, self.retained, self.best = 0, 0, 0, 0.0, 0.0

    def record(self, reply: httpx.Response | None, latency_ms: float) -> None:
        """One answer (``None``: the connection failed or timed out, counted as ``error``)."""
        self.latencies.append(latency_ms)
        self.statuses[reply.status_code if reply is not None else "error"] += 1
        if reply is None or reply.status_code != 200:
            return
        expert = reply.headers["x-expert"]
        self.experts[expert] += 1
        if reply.headers.get("x-routing-shed") == "true":
            self.shed += 1  # its scores are the recent averages: the policy's own choice is unknown
            return
        scores = {k: v for k, v in json.loads(reply.headers["x-routing-scores"]).items() if v is not None}
        favourite = max(scores, key=scores.get)
        self.decided += 1
        self.top += expert == favourite
        self.retained += scores[expert]
        self.best += scores[favourite]

    def summary(self, wall_s: float) -> dict:
        ok = self.statuses.get(200, 0)
        latencies = sorted(self.latencies)
        return {
            "requests": len(latencies),
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "p50_ms": round(statistics.median(latencies), 1),
            "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))], 1),
            "requests_per_s": round(len(latencies) / wall_s, 2),
            "top_choice_share": round(self.top / self.decided, 4) if self.decided else None,
            "shed_share": round(self.shed / ok, 4) if ok else None,
            "quality_retained": round(self.retained / self.best, 4) if self.best else None,
            "experts": dict(self.experts),
        }


async def ask(
    client: httpx.AsyncClient, base: str, query: str, routing: dict, max_tokens: int
) -> httpx.Response | None:
    body = {
        "messages": [{"role": "user", "content": query}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "routing": routing,
    }
    try:
        return await client.post(f"{base}/v1/chat/completions", json=body)
    except httpx.HTTPError:
        return None


async def run_point(base: str, queries: list[str], concurrency: int, routing: dict, max_tokens: int) -> dict:
    """Closed loop: ``concurrency`` clients, each sending its next query when its last is answered."""
    tally, todo = Tally(), list(queries)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        while todo:
            query = todo.pop()
            started = time.perf_counter()
            reply = await ask(client, base, query, routing, max_tokens)
            tally.record(reply, (time.perf_counter() - started) * 1e3)

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return tally.summary(time.perf_counter() - started)


async def run_open_point(
    base: str, queries: list[str], rate: float, routing: dict, max_tokens: int, seed: int = 0
) -> dict:
    """Open loop: queries arrive as a Poisson process at ``rate`` per second (the seeded gaps scaled
    so that this run's mean rate is exactly ``rate``) whether or not earlier ones were answered, as
    independent users send them, so a saturated expert's queue shows in the latency instead of
    slowing the clients down. Latency counts from each query's arrival time; throughput is the
    queries over the time from the first arrival to the last answer."""
    rng = random.Random(seed)
    arrivals, t = [], 0.0
    for _ in queries:
        arrivals.append(t)
        t += rng.expovariate(rate)
    scale = (len(queries) - 1) / rate / arrivals[-1] if len(queries) > 1 else 1.0
    arrivals = [at * scale for at in arrivals]  # the run's own mean rate is exactly ``rate``
    tally = Tally()
    limits = httpx.Limits(max_connections=len(queries), max_keepalive_connections=64)

    async def one(client: httpx.AsyncClient, query: str, at: float) -> None:
        await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
        reply = await ask(client, base, query, routing, max_tokens)
        tally.record(reply, (time.perf_counter() - start - at) * 1e3)

    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(one(client, q, at) for q, at in zip(queries, arrivals)))
    return tally.summary(time.perf_counter() - start)


def merged(runs: list[dict]) -> dict:
    """One point from the rounds of one (concurrency, policy): latencies by the worse round's
    quantile would hide nothing, so quantiles and rates are averaged, counts summed."""
    digits = {"p50_ms": 1, "p99_ms": 1, "requests_per_s": 2}
    keys = ("p50_ms", "p99_ms", "requests_per_s", "top_choice_share", "shed_share", "quality_retained")
    values = {k: [r[k] for r in runs if r[k] is not None] for k in keys}
    out = {k: round(statistics.mean(v), digits.get(k, 4)) if v else None for k, v in values.items()}
    out["requests"] = sum(r["requests"] for r in runs)
    out["experts"] = dict(sum((Counter(r["experts"]) for r in runs), Counter()))
    out["statuses"] = dict(sum((Counter(r["statuses"]) for r in runs), Counter()))
    return out


def plot(points: list[dict], x: str, label: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for policy in POLICIES:
        mine = [p for p in points if p["policy"] == policy]
        ax.plot([p[x] for p in mine], [p["p99_ms"] for p in mine], marker="o", label=policy)
    ax.set_xlabel(label)
    ax.set_ylabel("p99 latency (ms)")
    if x == "concurrency":
        ax.set_xscale("log", base=2)
    ax.set_title(f"Skewed traffic: p99 latency by {label}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def sweep(loads: list, key: str, rounds: int, one) -> list[dict]:
    """Both policies at each load (a concurrency or an offered rate), alternating in ``rounds`` and
    taking turns to go first (the second run meets engines the first warmed);
    ``one(load, routing)`` is the coroutine of one run."""
    points, turn = [], 0
    for load in loads:
        runs: dict[str, list[dict]] = {policy: [] for policy in POLICIES}
        for _ in range(rounds):
            order = list(POLICIES.items())[:: 1 if turn % 2 == 0 else -1]
            turn += 1
            for policy, routing in order:
                runs[policy].append(asyncio.run(one(load, routing)))
                print(f"{key} {load} {policy}: {runs[policy][-1]}", file=sys.stderr)
        points += [{key: load, "policy": p, **merged(r)} for p, r in runs.items()]
    return points


def ratios(points: list[dict], key: str, load) -> dict:
    """Load-aware over quality-only at one load."""
    at = {p["policy"]: p for p in points if p[key] == load}
    qo, la = at["quality_only"], at["load_aware"]
    return {
        key: load,
        "p99_ratio": round(la["p99_ms"] / qo["p99_ms"], 3),
        "throughput_ratio": round(la["requests_per_s"] / qo["requests_per_s"], 3),
        "quality_retained": la["quality_retained"],
    }


def numbers(text: str, kind: type) -> list:
    return [kind(x) for x in text.split(",") if x.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", default="1,8,32,64", help="closed-loop clients ('' for none)")
    parser.add_argument(
        "--rates", default="", help="open-loop offered requests/s, Poisson arrivals (e.g. 2,5,7,9)"
    )
    parser.add_argument("--requests", type=int, default=200, help="per point and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skew", type=float, default=0.9)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--capacity", type=int, default=8, help="each engine's max_num_seqs (0: the tiny app's own)"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    concurrencies, rates = numbers(args.concurrency, int), numbers(args.rates, float)
    if not concurrencies and not rates:
        parser.error("give --concurrency or --rates")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    app_args = tiny_app_args()
    if args.capacity:
        for expert in app_args["experts"]:
            expert["engine_kwargs"]["max_num_seqs"] = args.capacity
    queries, favourite = skewed_queries(app_args, args.requests, args.skew)
    base = run_local(app_args, free_port(), num_cpus=8)
    tokens = args.max_tokens
    try:
        asyncio.run(run_point(base, queries[:32], 8, {}, tokens))  # warm-up
        closed = sweep(
            concurrencies, "concurrency", args.rounds, lambda c, r: run_point(base, queries, c, r, tokens)
        )
        opened = sweep(
            rates, "offered_rps", args.rounds, lambda x, r: run_open_point(base, queries, x, r, tokens)
        )
        status = httpx.get(f"{base}/status", timeout=30).json()
    finally:
        stop_local()
    result = {
        "benchmark": "skew",
        "favourite": favourite,
        "skew": args.skew,
        "max_tokens": tokens,
        "capacity": args.capacity or None,
        "load_settings": status["load"]["settings"],
        "points": closed,
        "saturation": ratios(closed, "concurrency", max(concurrencies)) if closed else None,
        "open_loop_points": opened,
        "open_loop_ratios": [ratios(opened, "offered_rps", rate) for rate in rates],
    }
    line = json.dumps(result)
    print(line)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "skew.json").write_text(line + "\n")
        if closed:
            plot(closed, "concurrency", "concurrent clients", args.out / "skew_p99.png")
        if opened:
            plot(opened, "offered_rps", "offered requests/s", args.out / "skew_open_loop_p99.png")


if __name__ == "__main__":
    main()
