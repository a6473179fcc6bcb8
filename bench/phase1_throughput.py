"""Phase-1 throughput on CPU: (query, expert) pairs per second through the Ray Data job versus one
request at a time, for NLL-only scoring and for generation + NLL + BERTSim.

Serves configs/tiny_cpu.yaml (two real vLLM tiny-model experts), then for each mode scores the
same pairs (a) one at a time from the driver (the same ExpertCalls/BertSim code, awaited pair by
pair) and (b) with ``generate()`` (Ray Data, async actors keeping batches in flight), both in
steady state (set-up excluded). Prints one JSON line with pairs/s per mode and path and the ratio
batched / one-at-a-time.

    .venv/bin/python bench/phase1_throughput.py [--queries 48] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from deployments.config import load_serve_config  # noqa: E402
from ops.launch import APP_NAME, run_local, stop_local  # noqa: E402
from tests.conftest import SHARED_DATA, free_port  # noqa: E402
from training.generate import BertSim, ExpertCalls, generate, load_instructions, pending_pairs  # noqa: E402

CONFIG = REPO / "configs/tiny_cpu.yaml"


def one_at_a_time(config, pairs: pd.DataFrame, nll_only: bool, max_tokens: int) -> float:
    calls = ExpertCalls(config.model_dump(mode="json"), APP_NAME, max_tokens=max_tokens, nll_only=nll_only)
    similarity = BertSim(skip=nll_only)
    started = time.perf_counter()
    for row in pairs.to_dict("records"):
        similarity(pd.DataFrame([asyncio.run(calls.score(row))]))
    return len(pairs) / (time.perf_counter() - started)


def batched(config, data: Path, n: int, nll_only: bool, max_tokens: int) -> float:
    """Steady-state pairs/s of the Ray Data job: from its first finished batch to its last (the
    actors' one-off start - tokenizers, encoder - is left out, as it is for the other path)."""
    marks: list[tuple[float, int]] = []
    with tempfile.TemporaryDirectory() as tmp:
        generate(
            config,
            data,
            Path(tmp) / "t.parquet",
            limit=n,
            app_name=APP_NAME,
            max_tokens=max_tokens,
            nll_only=nll_only,
            batch_size=8,
            progress=lambda done, total, rate: marks.append((time.perf_counter(), done)),
        )
    if len(marks) < 2:
        return float("nan")  # one batch: no steady state to measure (the warm-up)
    (t0, d0), (t1, d1) = marks[0], marks[-1]
    return (d1 - d0) / (t1 - t0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--queries", type=int, default=96)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    config = load_serve_config(CONFIG)
    data = SHARED_DATA / "router_mix.jsonl.gz"
    queries = load_instructions(data, limit=args.queries)
    pairs = pending_pairs(queries, config.expert_names, set())
    run_local(CONFIG, free_port())
    results = {}
    try:
        batched(config, data, 4, False, args.max_tokens)  # warm-up: actors, encoder, engines
        for mode, nll_only in (("nll_only", True), ("generate_bertsim", False)):
            single = one_at_a_time(config, pairs, nll_only, args.max_tokens)
            ray_data = batched(config, data, args.queries, nll_only, args.max_tokens)
            results[mode] = {
                "one_at_a_time_pairs_per_s": round(single, 2),
                "ray_data_pairs_per_s": round(ray_data, 2),
                "ratio": round(ray_data / single, 2),
            }
    finally:
        stop_local()
    print(
        json.dumps(
            {"benchmark": "phase1_throughput", "pairs": len(pairs), "max_tokens": args.max_tokens, **results}
        )
    )


if __name__ == "__main__":
    main()
