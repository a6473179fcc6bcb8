"""Decision latency of the shipped default policy (serve_config.yaml's ``declared``: the skills its
experts declare) and of each trained router, per inference backend: one query at a time on 1
thread, and batched on 2 threads.

Trains every registered router kind (router/kinds/: MLP, BERT with MiniLM fine-tuned, 1NN, weighted
kNN, cluster, ...) on real router_mix queries (the domain-labelled table the tests use), saves them,
and loads the encoder routers once per backend (the others, MLP, score in numpy): ``torch`` fp32,
``onnx`` fp32 and ``onnx`` int8. Times ``scores()`` per query (p50/p99 ms, 1 thread) and in
batches of 64 (queries/s, 2 threads); the baseline in the same run is the Random policy's decision.
Also how often int8 picks the same expert as fp32. Prints one JSON line. Goals: encoder routers
<= 3 ms p50 (ONNX int8) and >= 1,000 queries/s batched, MLP <= 0.2 ms.

Goals of the default policy: p50 <= 1 ms, >= 5,000 queries/s batched.

    .venv/bin/python bench/router_latency.py [--train 1000] [--queries 300] [--default-only]
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

from router import kinds  # noqa: E402
from router.encoder import set_inference_threads  # noqa: E402
from router.policy import Message, RandomPolicy  # noqa: E402
from router.trained import load_model  # noqa: E402
from tests.conftest import domain_table  # noqa: E402
from training.table import to_matrices  # noqa: E402
from training.train import fit_local  # noqa: E402

TRAINING = {"bert": {"epochs": 1, "max_length": 128}}
"""Per-kind training settings here (quick: latency does not depend on how well a router learned)."""
BACKENDS = {"torch_fp32": {"backend": "torch"}, "onnx_fp32": {}, "onnx_int8": {"quantize": "int8"}}
GOALS = {"mlp": (0.2, None)}
ENCODER_GOAL = (3.0, 1000)
DEFAULT_POLICY_GOAL = (1.0, 5000)
"""p50 ms of one decision at most, batched decisions/s at least (encoder kinds: one encoder pass)."""


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
    single = load_model(folder, overrides)
    single.scores(texts[:8])  # warm up
    result = stats(per_query_ms(lambda t: single.scores([t]), texts))
    set_inference_threads(2)
    torch.set_num_threads(2)
    batched = load_model(folder, overrides)
    batched.scores(batch[:64])
    t0 = time.perf_counter()
    for s in range(0, len(batch), 64):
        batched.scores(batch[s : s + 64])
    result["batch_qps"] = round(len(batch) / (time.perf_counter() - t0), 1)
    return result, single.scores(texts).argmax(1)


def default_policy(texts: list[str], batch: list[str]) -> dict:
    """The shipped app's policy, as the router replica runs it (route_batch), from serve_config.yaml."""
    from deployments.config import load_serve_config
    from router.policy import RouteRequest, build_policy

    config = load_serve_config(REPO / "serve_config.yaml")
    t0 = time.perf_counter()
    policy = build_policy(config.policy, config.experts)
    build_s = time.perf_counter() - t0
    set_inference_threads(1)
    policy.warm_up()
    result = stats(per_query_ms(lambda t: policy.route_batch([RouteRequest([Message("user", t)])]), texts))
    set_inference_threads(2)
    requests = [RouteRequest([Message("user", t)]) for t in batch]
    t0 = time.perf_counter()
    for s in range(0, len(requests), 64):
        policy.route_batch(requests[s : s + 64])
    result["batch_qps"] = round(len(batch) / (time.perf_counter() - t0), 1)
    max_ms, min_qps = DEFAULT_POLICY_GOAL
    result["goal_met"] = bool(result["p50_ms"] <= max_ms and result["batch_qps"] >= min_qps)
    result["policy"] = config.policy.name
    result["build_s"] = round(build_s, 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train", type=int, default=1000, help="training queries")
    parser.add_argument("--queries", type=int, default=300, help="queries timed one at a time")
    parser.add_argument("--default-only", action="store_true", help="only the shipped default policy")
    args = parser.parse_args()
    m = to_matrices(domain_table(args.train, max(args.queries, 256)))
    train_m, test_m = m.split("train"), m.split("test")
    texts = test_m.queries[: args.queries]
    batch = (test_m.queries * (1024 // len(test_m.queries) + 1))[:1024]

    random_policy = RandomPolicy(train_m.experts, seed=0)
    baseline = stats(per_query_ms(lambda t: random_policy.route([Message("user", t)]), texts))
    results: dict = {"default_policy": default_policy(texts, batch)}
    results["default_policy"]["p50_vs_random"] = round(
        results["default_policy"]["p50_ms"] / baseline["p50_ms"], 1
    )
    with tempfile.TemporaryDirectory() as tmp:
        for kind in [] if args.default_only else kinds.names():
            fit_local(kind, train_m, config=TRAINING.get(kind)).save(Path(tmp) / kind)
            encoder = "encoder" in kinds.load(kind).settings.model_fields
            backends = BACKENDS if encoder else {"numpy": {}}
            choices = {}
            for backend, overrides in backends.items():
                result, choices[backend] = measure(Path(tmp) / kind, overrides, texts, batch)
                max_ms, min_qps = GOALS.get(kind, ENCODER_GOAL)
                is_goal = not encoder or backend == "onnx_int8"
                result["goal_met"] = (
                    bool(result["p50_ms"] <= max_ms and (min_qps is None or result["batch_qps"] >= min_qps))
                    if is_goal
                    else None
                )
                result["p50_vs_random"] = round(result["p50_ms"] / baseline["p50_ms"], 1)
                results[f"{kind}/{backend}"] = result
            if encoder:
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
