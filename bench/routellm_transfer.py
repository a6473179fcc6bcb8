"""Exploratory, NOT nested (C is read off the outer folds): does adding RouteLLM MMLU rows (the same
GPT-4 / Mixtral pair) to each GSM8K training fold help a per-expert logistic router on sentence
embeddings? The same 5 outer folds as ``expert-router evaluate`` (KFold, shuffled, seed 0); APGR of
the out-of-fold scores. "math subjects": MMLU rows whose id names mathematics, statistics or
algebra (fixed before the run). From the repository root, with ``tables/`` imported as in README:

    .venv/bin/python bench/routellm_transfer.py [ENCODER]

Its result: docs/results/routellm_gsm8k_mmlu_transfer/result.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from router.encoder import embed  # noqa: E402
from training.evaluate import expected_costs, routellm_metrics  # noqa: E402
from training.harness import strong_and_weak  # noqa: E402
from training.table import read_table, to_matrices  # noqa: E402

MATH_SUBJECTS = ("mathematics", "statistics", "algebra")


def out_of_fold_scores(x: np.ndarray, quality: np.ndarray, extra_x, extra_quality, c: float) -> np.ndarray:
    """Per-expert P(correct) of each GSM8K query, from a model fitted on the other folds (+ extra rows)."""
    scores = np.zeros_like(quality)
    for train, test in KFold(5, shuffle=True, random_state=0).split(x):
        fit_x, fit_q = np.vstack([x[train], extra_x]), np.vstack([quality[train], extra_quality])
        for j in range(quality.shape[1]):
            model = LogisticRegression(C=c, max_iter=2000).fit(fit_x, fit_q[:, j] > 0.5)
            scores[test, j] = model.predict_proba(x[test])[:, 1]
    return scores


def main() -> None:
    encoder = sys.argv[1] if len(sys.argv) > 1 else "builtin:all-MiniLM-L6-v2"
    gsm8k = to_matrices(read_table("tables/gsm8k.parquet"))
    mmlu = to_matrices(read_table("tables/mmlu.parquet"))
    assert gsm8k.experts == mmlu.experts, (gsm8k.experts, mmlu.experts)
    started = time.time()
    x, extra = embed(gsm8k.queries, encoder), embed(mmlu.queries, encoder)
    print("embedded in", round(time.time() - started), "s", file=sys.stderr)
    math_rows = np.array([any(s in q for s in MATH_SUBJECTS) for q in mmlu.query_ids])
    pair = strong_and_weak(gsm8k, expected_costs(gsm8k))
    assert pair, "APGR needs a strong and a weak expert"
    variants = {
        "gsm8k only": np.zeros(len(mmlu.queries), bool),
        "+ all mmlu": np.ones(len(mmlu.queries), bool),
        "+ mmlu math subjects": math_rows,
    }
    apgr = {}
    for label, rows in variants.items():
        for c in (0.1, 1.0):
            scores = out_of_fold_scores(x, gsm8k.quality, extra[rows], mmlu.quality[rows], c)
            apgr[f"{label}, C={c}"] = round(routellm_metrics(gsm8k, scores, *pair)["apgr"], 4)
            print(label, c, apgr[f"{label}, C={c}"], file=sys.stderr)
    print(json.dumps({"encoder": encoder, "mmlu_math_rows": int(math_rows.sum()), "apgr": apgr}))


if __name__ == "__main__":
    main()
