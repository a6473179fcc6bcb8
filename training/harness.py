"""Evaluate trained routers and the baselines side by side on one labelled table.

Two modes: score saved router artifacts on the table's test split, or train and test each named
router kind by K-fold cross-validation over the table's queries (out-of-fold scores for every query).
Either way each router gets the seed's criteria at cost weight 0, its knob curve, and for two-expert
tables RouteLLM's APGR/CPT (strong = the pricier expert).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import KFold

from router.encoder import embedding_cache
from router.knob import choose
from router.table import Matrices, read_table, to_matrices
from router.trained import load_router
from training.evaluate import (
    expected_costs,
    knob_curve,
    optimal_router,
    random_router,
    routellm_metrics,
    summarize,
    write_report,
    zero_router,
)
from training.train import fit_local

logger = logging.getLogger(__name__)


def cross_validated_scores(
    m: Matrices,
    kind: str,
    folds: int,
    temperature: float,
    config: dict[str, Any] | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Out-of-fold (n, m) scores of router ``kind`` trained on the other folds."""
    scores = np.zeros_like(m.quality)
    splits = KFold(folds, shuffle=True, random_state=seed).split(m.query_ids)
    with embedding_cache():
        for i, (train_idx, test_idx) in enumerate(splits):
            router = fit_local(kind, m.subset(train_idx), temperature, config)
            scores[test_idx] = router.scores(m.subset(test_idx).queries)
            logger.info("%s fold %d/%d done", kind, i + 1, folds)
    return scores


def router_result(m: Matrices, scores: np.ndarray, costs: np.ndarray) -> dict[str, Any]:
    """Criteria at cost weight 0, the knob curve, and RouteLLM metrics for two experts."""
    result = summarize(m, choose(scores, costs, 0.0))
    result["knob"] = knob_curve(m, scores, costs)
    if len(m.experts) == 2:
        strong = int(np.argmax(costs))
        result.update(
            {k: v for k, v in routellm_metrics(m, scores, strong, 1 - strong).items() if k != "curve"}
        )
    return result


def evaluate_table(
    table_path: str | Path,
    out: str | Path | None = None,
    routers: list[str | Path] = (),
    folds: int = 0,
    kinds: list[str] = (),
    quality_column: str = "quality",
    temperature: float = 0.1,
    config: dict[str, dict[str, Any]] | None = None,
    seed: int = 0,
    limit: int = 0,
) -> dict[str, Any]:
    """The report (``{"routers": {NAME: {...}}, "meta": {...}}``); written to ``out`` if given."""
    m_all = to_matrices(read_table(table_path), quality_column)
    if limit and limit < len(m_all):
        m_all = m_all.subset(np.sort(np.random.default_rng(seed).choice(len(m_all), limit, replace=False)))
    if folds:
        m = m_all
        scores = {
            kind: cross_validated_scores(m, kind, folds, temperature, (config or {}).get(kind), seed)
            for kind in kinds
        }
    else:
        m = m_all.split("test") if (m_all.splits == "test").any() else m_all
        loaded = [load_router(path) for path in routers]
        scores = {}
        for router in loaded:
            order = [router.experts.index(e) for e in m.experts]
            scores[router.kind] = router.scores(m.queries)[:, order]
    costs = expected_costs(m)
    results: dict[str, Any] = {name: router_result(m, s, costs) for name, s in scores.items()}
    results["random"] = summarize(m, random_router(m, seed))
    results["zero"] = zero_router(m)
    results["optimal"] = summarize(m, optimal_router(m, "quality"))
    if len(m.experts) == 2:
        strong = int(np.argmax(costs))
        oracle = routellm_metrics(m, m.quality, strong, 1 - strong)
        results["optimal"].update({k: oracle[k] for k in ("apgr", "cpt50", "cpt80")})
        chance = routellm_metrics(m, np.random.default_rng(seed).random(m.quality.shape), strong, 1 - strong)
        results["random"].update({k: chance[k] for k in ("apgr", "cpt50", "cpt80")})
        # Zero-Router: mixing the two experts in proportion x recovers exactly x of the gap.
        results["zero"].update({"apgr": 0.5, "cpt50": 0.5, "cpt80": 0.8})
    report = {
        "routers": results,
        "meta": {
            "table": Path(table_path).name,
            "queries": len(m),
            "experts": m.experts,
            "quality_column": quality_column,
            "temperature": temperature,
            "folds": folds,
            "limit": limit or None,
        },
    }
    if out:
        write_report(report, Path(out))
    return report
