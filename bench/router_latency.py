"""Decision latency of each trained router: one query at a time (1 thread) and batched (all cores).

Trains small MLP, BERT (MiniLM; also with int8 dynamic quantization, ``quantize: int8``) and 1NN
routers on real router_mix queries (domain-labelled table,
as the tests use), then times ``scores()``: per query with ``torch.set_num_threads(1)`` (p50/p99 ms)
and in batches of 256 with the default threads (queries/s). The baseline in the same run is the
Random-Router policy's decision. Prints one JSON line:
``{"routers": {"mlp": {"p50_ms", "p99_ms", "batch_qps", "p50_vs_random"}, "bert": …, "knn": …}, …}``.
Goals: MLP <= 0.5 ms and BERT <= 8 ms p50; >= 5,000 and >= 200 queries/s batched.

    .venv/bin/python bench/router_latency.py [--train 1000] [--queries 300]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from router.bert import BertRouter  # noqa: E402
from router.policy import Message, RandomPolicy  # noqa: E402
from router.table import to_matrices  # noqa: E402
from tests.conftest import domain_table  # noqa: E402
from training.train import fit_local  # noqa: E402

CONFIGS = {"mlp": {}, "bert": {"epochs": 1, "max_length": 128}, "knn": {}}
GOALS = {"mlp": (0.5, 5000), "bert": (8.0, 200), "knn": (None, None)}


def per_query_ms(call, texts: list[str]) -> list[float]:
    out = []
    for text in texts:
        t0 = time.perf_counter()
        call(text)
        out.append((time.perf_counter() - t0) * 1e3)
    return sorted(out)


def stats(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": round(statistics.median(ms), 4), "p99_ms": round(ms[int(0.99 * (len(ms) - 1))], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train", type=int, default=1000, help="training queries")
    parser.add_argument("--queries", type=int, default=300, help="queries timed one at a time")
    args = parser.parse_args()
    m = to_matrices(domain_table(args.train, max(args.queries, 256)))
    train_m, test_m = m.split("train"), m.split("test")
    texts = test_m.queries[: args.queries]
    batch = (test_m.queries * (2048 // len(test_m.queries) + 1))[:2048]

    random_policy = RandomPolicy(train_m.experts, seed=0)
    baseline = stats(per_query_ms(lambda t: random_policy.route([Message("user", t)]), texts))
    routers = {kind: fit_local(kind, train_m, config=config) for kind, config in CONFIGS.items()}
    bert = routers["bert"]  # the same fine-tuned weights, scored through int8 linear layers
    routers["bert_int8"] = BertRouter(
        bert.experts, bert.expected_costs, {**bert.config, "quantize": "int8"}, bert.model
    )
    results, choices = {}, {}
    for name, router in routers.items():
        kind = router.kind
        choices[name] = router.scores(texts).argmax(1)
        router.scores(texts[:8])  # warm up
        torch.set_num_threads(1)
        single = stats(per_query_ms(lambda t: router.scores([t]), texts))
        torch.set_num_threads(torch.get_num_interop_threads() or 2)
        t0 = time.perf_counter()
        for s in range(0, len(batch), 256):
            router.scores(batch[s : s + 256])
        qps = len(batch) / (time.perf_counter() - t0)
        max_ms, min_qps = GOALS[kind]
        results[name] = {
            **single,
            "batch_qps": round(qps, 1),
            "p50_vs_random": round(single["p50_ms"] / baseline["p50_ms"], 1),
            "goal_met": None if max_ms is None else bool(single["p50_ms"] <= max_ms and qps >= min_qps),
        }
    results["bert_int8"]["same_choice_as_bert"] = round(
        float((choices["bert_int8"] == choices["bert"]).mean()), 3
    )
    print(json.dumps({"benchmark": "router_latency", "routers": results, "baseline_random_policy": baseline}))


if __name__ == "__main__":
    main()
