"""How often the overload tier (``router/decisions.py``, ``DistilledTier``) picks the expert the
policy would, on queries it never learned from.

The tier learns, in batches of 64 as in a router replica, from the decisions of a policy on
router_mix train queries; then both choose for held-out queries: router_mix's test split, and
sources router_mix never trained on (Arena-Hard, MT-Bench, MedQA, MMLU medical, ARC). Policies:
the config's (``--config``, default serve_config.yaml's) and a domain router (each query to the
expert of its router_mix domain: what declared-expertise routing would do). Prints one JSON line:
agreement per policy and query set, and the tier's scoring time per query (p50/p99, one thread).

    .venv/bin/python bench/fast_tier_agreement.py [--config serve_config.yaml] [--train 2000] [--test 500]
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from deployments.config import load_serve_config  # noqa: E402
from router.decisions import DistilledTier  # noqa: E402
from router.encoder import set_inference_threads  # noqa: E402
from router.policy import Message, RouteRequest, RoutingDecision, build_policy  # noqa: E402
from tests.conftest import SHARED_DATA  # noqa: E402

HELD_OUT = ("arena_hard", "mt_bench", "medqa_usmle", "mmlu_medical", "arc_challenge")
"""Sources of another kind or format than router_mix's train split (none of them is in it)."""


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in gzip.open(path, "rt")]


def agreement(tier: DistilledTier, decide, queries: list[str]) -> float:
    """Share of ``queries`` the tier sends where ``decide`` does."""
    chosen = decide(queries)
    tier_says = [max((s := tier.scores([Message("user", q)])), key=s.get) for q in queries]
    return round(sum(a == b for a, b in zip(chosen, tier_says)) / len(queries), 3)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(REPO / "serve_config.yaml"))
    parser.add_argument("--train", type=int, default=2000, help="router_mix train queries learned from")
    parser.add_argument("--test", type=int, default=500, help="queries per held-out set")
    args = parser.parse_args()
    rng = random.Random(0)
    mix = read(SHARED_DATA / "router_mix.jsonl.gz")
    rng.shuffle(mix)
    train = [r for r in mix if r["split"] == "train"][: args.train]
    sets = {"router_mix_test": [r for r in mix if r["split"] == "test"][: args.test]}
    held = [r for source in HELD_OUT for r in read(SHARED_DATA / "normalized" / f"{source}.jsonl.gz")]
    rng.shuffle(held)
    sets["held_out_sources"] = held[: args.test]

    set_inference_threads(1)
    config = load_serve_config(args.config)
    policy = build_policy(config.policy, config.experts)
    domains = sorted({r["domain"] for r in mix})
    by_domain = {r["instruction"]: r["domain"] for r in [*mix, *held]}

    def configured(queries: list[str]) -> list[str]:
        return [
            d.expert
            for start in range(0, len(queries), 64)
            for d in policy.route_batch(
                [RouteRequest([Message("user", q)]) for q in queries[start : start + 64]]
            )
        ]

    def domain_router(queries: list[str]) -> list[str]:
        return [by_domain[q] for q in queries]

    result: dict = {"benchmark": "fast_tier_agreement", "train_queries": len(train), "policies": {}}
    for name, experts, decide in (
        (f"config:{config.policy.name}", config.expert_names, configured),
        ("domain_router", domains, domain_router),
    ):
        tier = DistilledTier(experts)
        for start in range(0, len(train), 64):
            texts = [r["instruction"] for r in train[start : start + 64]]
            tier.learn(
                texts,
                [RoutingDecision.from_scores({e: float(e == c) for e in experts}) for c in decide(texts)],
            )
        result["policies"][name] = {
            label: agreement(tier, decide, [r["instruction"] for r in rows]) for label, rows in sets.items()
        }
        shares = {e: 0 for e in experts}
        for choice in decide([r["instruction"] for r in sets["router_mix_test"]]):
            shares[choice] += 1
        result["policies"][name]["policy_choices_on_router_mix_test"] = shares
    times = []
    for row in sets["router_mix_test"]:
        started = time.perf_counter()
        tier.scores([Message("user", row["instruction"])])
        times.append((time.perf_counter() - started) * 1e3)
    times.sort()
    result["tier_ms"] = {
        "p50": round(statistics.median(times), 3),
        "p99": round(times[int(0.99 * (len(times) - 1))], 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
