"""Evaluate trained routers and the baselines side by side on one labelled table.

Two modes: score saved router artifacts on the table's test split, or train and test each named
router kind by K-fold cross-validation over the table's queries (out-of-fold scores for every query).
Either way each router gets the seed's criteria at cost weight 0, its knob curve, and for two-expert
tables RouteLLM's APGR/CPT (strong = the pricier expert).
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import KFold

from router import kinds
from router.encoder import embedding_cache
from router.knob import choose
from router.trained import load_model
from training.evaluate import (
    apgr_interval,
    expected_costs,
    knob_curve,
    optimal_router,
    random_router,
    routellm_metrics,
    summarize,
    versus_best_expert,
    write_report,
    zero_router,
)
from training.table import Matrices, read_table, to_matrices
from training.train import fit_local

logger = logging.getLogger(__name__)


def cross_validated_predictions(
    m: Matrices,
    kind: str,
    folds: int,
    temperature: float,
    config: dict[str, Any] | None = None,
    seed: int = 0,
    inner_folds: int = 0,
    chosen: list[dict[str, Any]] | None = None,
    grid: dict[str, list[Any]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold (n, m) scores and expected costs of router ``kind`` trained on the other folds
    (see :meth:`router.trained.RoutingModel.predict`). With ``inner_folds``,
    the settings of :func:`search_grid` are chosen per outer fold by cross-validation on that fold's
    training part only (nested); the choices are appended to ``chosen``."""
    scores, costs = np.zeros_like(m.quality), np.zeros_like(m.quality)
    splits = KFold(folds, shuffle=True, random_state=seed).split(m.query_ids)
    with embedding_cache():
        for i, (train_idx, test_idx) in enumerate(splits):
            train = m.subset(train_idx)
            settings = dict(config or {})
            if inner_folds:
                settings = tuned_config(train, kind, inner_folds, temperature, settings, seed, grid)
                if chosen is not None:
                    chosen.append({k: settings[k] for k in search_grid(kind, grid)})
            router = fit_local(kind, train, temperature, settings)
            scores[test_idx], costs[test_idx] = router.predict(m.subset(test_idx).queries)
            logger.info("%s fold %d/%d done %s", kind, i + 1, folds, settings)
    return scores, costs


def strong_and_weak(m: Matrices, costs: np.ndarray) -> tuple[int, int] | None:
    """RouteLLM's setting, where APGR and CPT mean something: two experts, the one that costs at
    least 10% more is better on average by at least 0.01 of quality. Its (strong, weak) indexes."""
    if len(m.experts) != 2:
        return None
    strong = int(np.argmax(costs))
    weak = 1 - strong
    gap = m.quality[:, strong].mean() - m.quality[:, weak].mean()
    return (strong, weak) if costs[strong] >= 1.1 * costs[weak] and gap >= 0.01 else None


def selection_score(m: Matrices, scores: np.ndarray) -> float:
    """What model selection maximises: APGR in RouteLLM's setting, else quality at cost weight 0."""
    pair = strong_and_weak(m, expected_costs(m))
    if pair:
        return float(routellm_metrics(m, scores, *pair)["apgr"] or 0.0)
    return float(summarize(m, choose(scores, expected_costs(m), 0.0))["quality"])


def search_grid(kind: str, extra: dict[str, list[Any]] | None = None) -> dict[str, list[Any]]:
    """What nested CV chooses among for ``kind``: its ``grid``, plus those of ``extra``'s settings
    the kind has (e.g. ``{"encoder": [...]}`` for the kinds that embed)."""
    spec = kinds.load(kind)
    known = set(spec.settings.model_fields) - set(kinds.Settings.model_fields)
    return {**spec.grid, **{k: v for k, v in (extra or {}).items() if k in known}}


def tuned_config(
    m: Matrices,
    kind: str,
    folds: int,
    temperature: float,
    config: dict[str, Any],
    seed: int,
    extra_grid: dict[str, list[Any]] | None = None,
) -> dict[str, Any]:
    """``config`` with the :func:`search_grid` setting that scores best by ``folds``-fold CV on ``m``."""
    grid = search_grid(kind, extra_grid)
    if not grid:
        return config
    candidates = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    results = [
        selection_score(
            m, cross_validated_predictions(m, kind, folds, temperature, {**config, **c}, seed + 1)[0]
        )
        for c in candidates
    ]
    return {**config, **candidates[int(np.argmax(results))]}


def router_result(m: Matrices, scores: np.ndarray, costs: np.ndarray) -> dict[str, Any]:
    """Criteria at cost weight 0, the knob curve (``costs``: the router's expected costs, (m,) or
    (n, m)), and RouteLLM metrics for two experts."""
    result = summarize(m, choose(scores, costs, 0.0))
    result["knob"] = knob_curve(m, scores, costs)
    result["vs_best_expert"] = versus_best_expert(m, scores, costs)
    pair = strong_and_weak(m, expected_costs(m))
    if pair:
        result.update({k: v for k, v in routellm_metrics(m, scores, *pair).items() if k != "curve"})
        result["apgr_ci95"] = apgr_interval(m, scores, *pair)
    return result


def evaluate_table(
    table_path: str | Path,
    out: str | Path | None = None,
    routers: list[str | Path] = (),
    folds: int = 0,
    router_kinds: list[str] = (),
    quality_column: str = "quality",
    temperature: float = 0.1,
    config: dict[str, dict[str, Any]] | None = None,
    seed: int = 0,
    limit: int = 0,
    inner_folds: int = 3,
    grid: dict[str, list[Any]] | None = None,
) -> dict[str, Any]:
    """The report (``{"routers": {NAME: {...}}, "meta": {...}}``); written to ``out`` if given.
    ``config``: settings per kind; ``grid``: settings nested CV also chooses among (see
    :func:`search_grid`)."""
    recorded = set(kinds.Settings.model_fields)  # set by training itself, not tunable
    known = {k for kind in router_kinds for k in kinds.load(kind).settings.model_fields} - recorded
    unknown = set(grid or {}) - known
    if unknown:
        raise ValueError(f"--grid settings no kind among {list(router_kinds)} has: {sorted(unknown)}")
    if stray := sorted(set(config or {}) - set(router_kinds)):
        raise ValueError(f"--config names kinds not evaluated here ({', '.join(router_kinds)}): {stray}")
    for kind, settings in (config or {}).items():
        kinds.load(kind).configure(settings)  # a wrong setting fails now, before any kind runs
    m_all = to_matrices(read_table(table_path), quality_column)
    if limit and limit < len(m_all):
        m_all = m_all.subset(np.sort(np.random.default_rng(seed).choice(len(m_all), limit, replace=False)))
    chosen: dict[str, list[dict[str, Any]]] = {}
    if folds:
        m = m_all
        predictions = {}
        with embedding_cache():  # every kind reuses the embeddings of the queries
            for kind in router_kinds:
                chosen[kind] = []
                predictions[kind] = cross_validated_predictions(
                    m,
                    kind,
                    folds,
                    temperature,
                    (config or {}).get(kind),
                    seed,
                    inner_folds,
                    chosen[kind],
                    grid,
                )
    else:
        m = m_all.split("test") if (m_all.splits == "test").any() else m_all
        loaded = [load_model(path) for path in routers]
        predictions = {}
        for router in loaded:
            order = [router.experts.index(e) for e in m.experts]
            scores, costs = router.predict(m.queries)
            predictions[router.kind] = scores[:, order], costs[:, order]
    results: dict[str, Any] = {name: router_result(m, *p) for name, p in predictions.items()}
    for name, settings in chosen.items():
        if any(settings):
            results[name]["chosen_per_fold"] = settings
    results["random"] = summarize(m, random_router(m, seed))
    results["zero"] = zero_router(m)
    results["optimal"] = summarize(m, optimal_router(m, "quality"))
    pair = strong_and_weak(m, expected_costs(m))
    if pair:
        strong, weak = pair
        oracle = routellm_metrics(m, m.quality, strong, weak)
        results["optimal"].update({k: oracle[k] for k in ("apgr", "cpt50", "cpt80")})
        chance = routellm_metrics(m, np.random.default_rng(seed).random(m.quality.shape), strong, weak)
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
            "inner_folds": inner_folds if folds else None,
            "limit": limit or None,
            "config": config or None,
            "grid": grid or None,
        },
    }
    if out:
        write_report(report, Path(out))
    return report
