"""Decision latency of each trained router, per inference backend: one query at a time on 1 thread,
and batched on 2 threads.

Trains MLP, BERT (MiniLM fine-tuned) and 1NN routers on real router_mix queries (the domain-labelled
table the tests use), saves them, and loads the encoder routers once per backend: ``torch`` fp32,
``onnx`` fp32 and ``onnx`` int8. Times ``scores()`` per query (p50/p99 ms, 1 thread) and in
batches of 64 (queries/s, 2 threads); the baseline in the same run is the Random policy's decision.
Also how often int8 picks the same expert as fp32. Prints one JSON line. Goals: BERT and 1NN
<= 3 ms p50 (ONNX int8), MLP <= 0.2 ms; BERT and 1NN >= 1,000 queries/s batched.

    .venv/bin/python bench/router_latency.py [--train 1000] [--queries 300]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from router.encoder import set_inference_threads  # noqa: E402
from router.policy import Message, RandomPolicy  # noqa: E402
from router.table import to_matrices  # noqa: E402
from router.trained import load_router  # noqa: E402
from tests.conftest import domain_table  # noqa: E402
from training.train import fit_local  # noqa: E402

CONFIGS = {"mlp": {}, "bert": {"epochs": 1, "max_length": 128}, "knn": {}}
BACKENDS = {"torch_fp32": {"backend": "torch"}, "onnx_fp32": {}, "onnx_int8": {"quantize": "int8"}}
GOALS = {"mlp": (0.2, None), "bert": (3.0, 1000), "knn": (3.0, 1000)}


def per_query_ms(call, texts: list[str]) -> list[float]:
    out = []
    for text in texts:
        t0 = time.perf_counter()
        call(text)
        out.append((time.perf_counter() - t0) * 1e3)
    return sorted(out)


def stats(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": round(statistics.median(ms), 4), "p99_ms": round(ms[int(0.99 * (len(ms) - 1))], 4)}


def measure(folder: Path, overrides: dict, texts: list[str], batch: list[str]) -> tuple[dict, object]:
    import torch

    set_inference_threads(1)
    torch.set_num_threads(1)
    single = load_router(folder, overrides)
    single.scores(texts[:8])  # warm up
    result = stats(per_query_ms(lambda t: single.scores([t]), texts))
    set_inference_threads(2)
    torch.set_num_threads(2)
    batched = load_router(folder, overrides)
    batched.scores(batch[:64])
    t0 = time.perf_counter()
    for s in range(0, len(batch), 64):
        batched.scores(batch[s : s + 64])
    result["batch_qps"] = round(len(batch) / (time.perf_counter() - t0), 1)
    return result, single.scores(texts).argmax(1)


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
    batch = (test_m.queries * (1024 // len(test_m.queries) + 1))[:1024]

    random_policy = RandomPolicy(train_m.experts, seed=0)
    baseline = stats(per_query_ms(lambda t: random_policy.route([Message("user", t)]), texts))
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind, config in CONFIGS.items():
            fit_local(kind, train_m, config=config).save(Path(tmp) / kind)
            backends = {"torch": {}} if kind == "mlp" else BACKENDS
            choices = {}
            for backend, overrides in backends.items():
                result, choices[backend] = measure(Path(tmp) / kind, overrides, texts, batch)
                max_ms, min_qps = GOALS[kind]
                is_goal = kind == "mlp" or backend == "onnx_int8"
                result["goal_met"] = (
                    bool(result["p50_ms"] <= max_ms and (min_qps is None or result["batch_qps"] >= min_qps))
                    if is_goal
                    else None
                )
                result["p50_vs_random"] = round(result["p50_ms"] / baseline["p50_ms"], 1)
                results[f"{kind}/{backend}"] = result
            if kind != "mlp":
                same = float((choices["onnx_int8"] == choices["onnx_fp32"]).mean())
                results[f"{kind}/onnx_int8"]["same_choice_as_fp32"] = round(same, 3)
    median_tokens = statistics.median(len(t.split()) for t in texts)
    print(
        json.dumps(
            {
                "benchmark": "router_latency",
                "routers": results,
                "baseline_random_policy": baseline,
                "median_query_words": median_tokens,
            }
        )
    )


if __name__ == "__main__":
    main()
