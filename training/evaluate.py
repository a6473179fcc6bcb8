"""Evaluation harness: routers and baselines scored on the same labelled table.

A router is judged by the per-query expert it chooses (``choice``, shape (n,)) on a
:class:`training.table.Matrices`. :func:`summarize` gives the seed paper's criteria (quality, BERTSim,
NLL, cost, $ per 1M tokens, throughput, queries per expert); the baselines (:func:`zero_router`,
:func:`optimal_router`, :func:`random_router`) are scored the same way; :func:`knob_curve` sweeps the
cost/quality knob of :mod:`router.knob`; :func:`routellm_metrics` gives RouteLLM's APGR and CPT for
a strong/weak pair; :func:`write_report` writes JSON, Markdown and PNG plots.
Pure numpy/pandas/matplotlib: no Ray, no torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from router.knob import choose, relative_costs
from training.table import Matrices

CRITERIA = ("quality", "bertsim", "nll", "cost", "cost_per_1m_tokens", "throughput")
_HIGHER_IS_BETTER = {"quality": True, "bertsim": True, "nll": False, "cost": False}


def _num(x: Any) -> float | None:
    """A plain float, or None for NaN/inf/None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _nanmean(values: np.ndarray) -> float | None:
    """Mean over the finite values; None if there are none."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def _ratio(num: float, den: float, scale: float = 1.0) -> float | None:
    return _num(num / den * scale) if den > 0 else None


def _picked(values: np.ndarray, choice: np.ndarray) -> np.ndarray:
    return values[np.arange(len(choice)), choice]


def _check_choice(m: Matrices, choice: np.ndarray) -> np.ndarray:
    choice = np.asarray(choice)
    if choice.shape != (len(m),):
        raise ValueError(f"choice must have shape ({len(m)},), got {choice.shape}")
    if not np.issubdtype(choice.dtype, np.integer):
        raise ValueError("choice must hold integer expert indices")
    if choice.size and (choice.min() < 0 or choice.max() >= len(m.experts)):
        raise ValueError(f"choice indices must lie in [0, {len(m.experts)})")
    return choice


def summarize(m: Matrices, choice: np.ndarray) -> dict[str, Any]:
    """The seed paper's criteria for sending query ``i`` to expert ``choice[i]``.

    ``quality`` mean; ``bertsim``/``nll`` mean over known values (None if none); ``cost`` total $;
    ``cost_per_1m_tokens`` total $ per 1M input+output tokens; ``throughput`` output tokens per
    second over the chosen answers with a known inference time (None if none); ``counts`` queries
    per expert; ``n`` queries. Plain JSON types, None for anything undefined.
    """
    choice = _check_choice(m, choice)
    cost = _picked(m.cost, choice)
    tokens = _picked(m.input_tokens, choice) + _picked(m.output_tokens, choice)
    seconds = _picked(m.inference_s, choice)
    timed = np.isfinite(seconds)
    out_tokens = _picked(m.output_tokens, choice)[timed]
    counts = np.bincount(choice, minlength=len(m.experts))
    return {
        "quality": _num(_picked(m.quality, choice).mean()) if len(m) else None,
        "bertsim": _nanmean(_picked(m.bertsim, choice)),
        "nll": _nanmean(_picked(m.nll, choice)),
        "cost": _num(cost.sum()),
        "cost_per_1m_tokens": _ratio(float(cost.sum()), float(tokens.sum()), 1e6),
        "throughput": _ratio(float(out_tokens.sum()), float(seconds[timed].sum())),
        "counts": {e: int(c) for e, c in zip(m.experts, counts)},
        "n": len(m),
    }


def zero_router(m: Matrices) -> dict[str, Any]:
    """The average of all experts: each criterion of the all-to-expert-j summaries, averaged over j.

    Criteria undefined for an expert (None) are left out of its average; counts are ``n / m`` each.
    """
    per_expert = [summarize(m, np.full(len(m), j)) for j in range(len(m.experts))]
    out: dict[str, Any] = {}
    for key in CRITERIA:
        known = [s[key] for s in per_expert if s[key] is not None]
        out[key] = float(np.mean(known)) if known else None
    out["counts"] = {e: len(m) / len(m.experts) for e in m.experts}
    out["n"] = len(m)
    return out


def optimal_router(m: Matrices, criterion: str = "quality") -> np.ndarray:
    """The per-query oracle: best expert on ``criterion`` (quality, bertsim: highest; nll, cost: lowest).

    Ties go to the cheaper expert on that query (for ``cost``: to the higher quality), then the
    lower index. Unknown (NaN) values never win.
    """
    if criterion not in _HIGHER_IS_BETTER:
        raise ValueError(f"criterion must be one of {sorted(_HIGHER_IS_BETTER)}")
    values = np.asarray(getattr(m, criterion), dtype=float)
    key = -values if _HIGHER_IS_BETTER[criterion] else values.copy()
    key[~np.isfinite(key)] = np.inf
    tie = -m.quality if criterion == "cost" else m.cost
    index = np.broadcast_to(np.arange(len(m.experts)), key.shape)
    # lexsort: last key is primary; sort each row by (key, tie, index) and take the first.
    order = np.lexsort((index, tie, key), axis=1)
    return order[:, 0]


def random_router(m: Matrices, seed: int = 0) -> np.ndarray:
    """A uniformly random expert per query (seeded)."""
    return np.random.default_rng(seed).integers(0, len(m.experts), size=len(m))


def expected_costs(m: Matrices) -> np.ndarray:
    """Per-expert mean cost per query (m,): the ``costs`` the knob expects (take it from train data)."""
    return np.nanmean(m.cost, axis=0)


def cheapest_weight(scores: np.ndarray, costs: np.ndarray) -> float:
    """A cost weight at which :func:`router.knob.choose` sends every query to its cheapest expert.

    ``costs``: (m,) per expert or (n, m) per query. Experts priced like the cheapest one cannot be
    separated by the weight and are ignored.
    """
    scores = np.asarray(scores, dtype=float)
    if scores.size == 0:
        return 1.0
    rel = np.broadcast_to(relative_costs(costs), scores.shape)
    rows = np.arange(len(scores))
    cheap = np.argmin(rel, axis=1)
    above = rel - rel[rows, cheap][:, None]
    dearer = above > 0
    if not dearer.any():
        return 1.0
    gain = scores - scores[rows, cheap][:, None]
    need = np.where(dearer, gain / np.where(dearer, above, 1.0), -np.inf)
    return max(float(need.max()), 0.0) * 1.01 + 1e-9


def default_weights(scores: np.ndarray, costs: np.ndarray, points: int = 40) -> np.ndarray:
    """0 plus a log grid of ``points - 1`` weights ending at :func:`cheapest_weight`."""
    top = cheapest_weight(scores, costs)
    return np.concatenate([[0.0], np.geomspace(top * 1e-4, top, points - 1)])


def knob_curve(
    m: Matrices, scores: np.ndarray, costs: np.ndarray, weights: np.ndarray | None = None
) -> list[dict[str, Any]]:
    """:func:`summarize` of ``choose(scores, costs, w)`` for each cost weight ``w`` (plus ``cost_weight``).

    ``scores`` (n, m) predicted quality, ``costs`` expected costs, (m,) per expert or (n, m) per
    query; ``weights``
    default to :func:`default_weights` (0 … everything to the cheapest expert).
    """
    scores = np.asarray(scores, dtype=float)
    if scores.shape != m.quality.shape:
        raise ValueError(f"scores must have shape {m.quality.shape}, got {scores.shape}")
    grid = default_weights(scores, costs) if weights is None else np.asarray(weights, dtype=float)
    return [{"cost_weight": float(w), **summarize(m, choose(scores, costs, w))} for w in grid]


def versus_best_expert(
    m: Matrices, scores: np.ndarray, costs: np.ndarray, rounds: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """The router against the best single expert (highest mean quality) at no more than its cost.

    The knob point is the smallest cost weight whose total cost is at most that expert's (chosen on
    cost alone, never on quality); the difference is the mean per-query quality difference, paired,
    with a percentile bootstrap 95% interval over queries (``rounds`` resamples).
    """
    best = int(np.argmax(m.quality.mean(axis=0)))
    budget = float(np.nansum(m.cost[:, best]))
    for weight in default_weights(scores, costs):
        choice = choose(scores, costs, weight)
        if np.nansum(_picked(m.cost, choice)) <= budget * (1 + 1e-9):
            break
    diff = _picked(m.quality, choice) - m.quality[:, best]
    return {
        "expert": m.experts[best],
        "cost_weight": float(weight),
        "quality": _num(_picked(m.quality, choice).mean()),
        "expert_quality": _num(m.quality[:, best].mean()),
        "difference": _num(diff.mean()),
        "ci95": _bootstrap_interval(lambda idx: diff[idx].mean(axis=1), len(diff), rounds, seed),
        "cost": _num(np.nansum(_picked(m.cost, choice))),
        "expert_cost": _num(budget),
    }


def _bootstrap_interval(
    statistic: Callable[[np.ndarray], np.ndarray], n: int, rounds: int, seed: int
) -> list[float | None]:
    """Percentile bootstrap 95% interval of ``statistic`` over ``rounds`` resamples of n queries
    with replacement; ``statistic`` maps a (k, n) array of resampled indexes to k values (NaN where
    undefined, left out)."""
    rng = np.random.default_rng(seed)
    values = np.concatenate(
        [statistic(rng.integers(0, n, (min(100, rounds - i), n))) for i in range(0, rounds, 100)]
    )
    values = values[np.isfinite(values)]
    return [_num(v) for v in np.percentile(values, [2.5, 97.5])] if values.size else [None, None]


def _gain_curve(margin: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """Quality gained over the weak expert when the top k queries by ``margin`` (last axis,
    descending, stable on ties) go to the strong one, k = 0..n; ``gain`` = strong - weak quality."""
    order = np.argsort(-margin, axis=-1, kind="stable")
    ranked = np.cumsum(np.take_along_axis(gain, order, axis=-1), axis=-1)
    return np.concatenate([np.zeros(ranked.shape[:-1] + (1,)), ranked], axis=-1)


def _apgr(gain: np.ndarray) -> np.ndarray:
    """APGR of gain curves (last axis, k = 0..n): the trapezoid area under PGR = gain / total gain
    over x = k / n; NaN where the total gain is 0."""
    total = gain[..., -1]
    area = (gain[..., 1:] + gain[..., :-1]).sum(axis=-1) / (2 * (gain.shape[-1] - 1))
    defined = np.abs(total) > 1e-12
    return np.where(defined, area / np.where(defined, total, 1.0), np.nan)


def apgr_interval(
    m: Matrices, scores: np.ndarray, strong: int, weak: int, rounds: int = 1000, seed: int = 0
) -> list[float | None]:
    """Percentile bootstrap 95% interval of APGR over queries (the scores held fixed, queries
    resampled); resamples where both experts' quality is equal (APGR undefined) are left out."""
    scores = np.asarray(scores, dtype=float)
    margin = scores[:, strong] - scores[:, weak]
    diff = m.quality[:, strong] - m.quality[:, weak]
    return _bootstrap_interval(lambda idx: _apgr(_gain_curve(margin[idx], diff[idx])), len(m), rounds, seed)


def routellm_metrics(m: Matrices, scores: np.ndarray, strong: int, weak: int) -> dict[str, Any]:
    """RouteLLM's APGR and CPT(50%), CPT(80%) for routing between experts ``strong`` and ``weak``.

    Queries ranked by ``scores[:, strong] - scores[:, weak]`` (descending, stable on ties); the top
    k go to the strong expert, k = 0..n. PGR(k) = (q_k - q_weak) / (q_strong - q_weak);
    APGR = trapezoid area of PGR over x = k/n; CPT(p) = smallest x with PGR >= p. Values that
    need the division are None when all-strong and all-weak quality are equal.
    ``curve`` holds x (share of calls to strong), quality and pgr at the n + 1 points.
    """
    scores = np.asarray(scores, dtype=float)
    n = len(m)
    if n == 0 or strong == weak:
        raise ValueError("need at least one query and two different experts")
    q_s, q_w = m.quality[:, strong], m.quality[:, weak]
    margin = scores[:, strong] - scores[:, weak]
    gain = _gain_curve(margin, q_s - q_w)
    quality = (q_w.sum() + gain) / n
    x = np.arange(n + 1) / n
    strong_all, weak_all = float(q_s.mean()), float(q_w.mean())
    out: dict[str, Any] = {
        "strong": m.experts[strong],
        "weak": m.experts[weak],
        "quality_strong": strong_all,
        "quality_weak": weak_all,
        "apgr": None,
        "cpt50": None,
        "cpt80": None,
    }
    pgr: list[float | None] = [None] * (n + 1)
    if not math.isclose(strong_all, weak_all, rel_tol=0.0, abs_tol=1e-12):
        pgr_arr = (quality - weak_all) / (strong_all - weak_all)
        pgr = pgr_arr.tolist()
        out["apgr"] = float(_apgr(gain))
        for p in (50, 80):
            # tolerance: PGR at x = 1 is 1 up to rounding
            hit = np.flatnonzero(pgr_arr >= p / 100 - 1e-12)
            out[f"cpt{p}"] = float(x[hit[0]]) if hit.size else None
    out["curve"] = {"x": x.tolist(), "quality": quality.tolist(), "pgr": pgr}
    return out


# --- report -----------------------------------------------------------------------------------

_LABELS = {
    "quality": "quality",
    "bertsim": "BERTSim",
    "nll": "NLL",
    "cost": "cost ($)",
    "cost_per_1m_tokens": "$ / 1M tokens",
    "throughput": "tokens/s",
}


def _fmt(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _interval(ci: list[Any] | None) -> str:
    return f"[{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else ""


def _md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return lines


def _experts(results: dict[str, Any]) -> list[str]:
    names = list(results.get("meta", {}).get("experts", []))
    for summary in results["routers"].values():
        names += [e for e in summary.get("counts", {}) if e not in names]
    return names


def _jsonable(x: Any) -> Any:
    """Numpy scalars/arrays and NaN made plain JSON."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer, bool, np.bool_)):
        return x.item() if isinstance(x, np.generic) else x
    if isinstance(x, (float, np.floating)):
        return _num(x)
    if isinstance(x, Path):
        return str(x)
    return x


def _figure(width: float = 7.0, height: float = 4.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_counts(results: dict[str, Any], path: Path) -> Path:
    """Grouped bars: queries sent to each expert, one colour per routing method."""
    routers, experts = results["routers"], _experts(results)
    fig = _figure(max(6.0, 1.2 * len(experts) + 3), 4.5)
    ax = fig.add_subplot()
    width = 0.8 / max(len(routers), 1)
    base = np.arange(len(experts))
    for i, (name, summary) in enumerate(routers.items()):
        counts = [summary.get("counts", {}).get(e, 0) for e in experts]
        ax.bar(base + (i - (len(routers) - 1) / 2) * width, counts, width, label=name)
    ax.set_xticks(base, experts)
    ax.set_ylabel("queries")
    ax.set_title("Query count per expert & routing method")
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)
    return path


def plot_trilemma(results: dict[str, Any], path: Path) -> Path:
    """Cost vs quality, one labelled point per router, colour = throughput (grey if unknown)."""
    fig = _figure()
    ax = fig.add_subplot()
    points = [(n, s) for n, s in results["routers"].items() if s.get("cost") is not None]
    known = [s["throughput"] for _, s in points if s.get("throughput") is not None]
    if known:
        xs = [s["cost"] for _, s in points if s.get("throughput") is not None]
        ys = [s["quality"] for _, s in points if s.get("throughput") is not None]
        sc = ax.scatter(xs, ys, c=known, cmap="viridis", s=80, zorder=3)
        fig.colorbar(sc, ax=ax, label="throughput (tokens/s)")
    unknown = [(s["cost"], s["quality"]) for _, s in points if s.get("throughput") is None]
    if unknown:
        ax.scatter(*zip(*unknown), c="grey", s=80, zorder=3, label="throughput unknown")
        ax.legend(fontsize="small")
    for name, s in points:
        ax.annotate(name, (s["cost"], s["quality"]), textcoords="offset points", xytext=(5, 5))
    ax.set_xlabel("cost ($)")
    ax.set_ylabel("quality")
    ax.set_title("Cost vs quality vs throughput")
    fig.savefig(path, dpi=120)
    return path


def plot_knob(results: dict[str, Any], path: Path) -> Path:
    """Quality vs cost as the knob's cost weight moves, one line per router that has a knob curve."""
    fig = _figure()
    ax = fig.add_subplot()
    for name, summary in results["routers"].items():
        knob = summary.get("knob")
        if knob:
            ax.plot([p["cost"] for p in knob], [p["quality"] for p in knob], marker=".", label=name)
    for name, summary in results["routers"].items():
        if not summary.get("knob") and summary.get("cost") is not None:
            ax.scatter([summary["cost"]], [summary["quality"]], marker="x", color="black", zorder=3)
            point = (summary["cost"], summary["quality"])
            ax.annotate(name, point, textcoords="offset points", xytext=(5, 5))
    ax.set_xlabel("cost ($)")
    ax.set_ylabel("quality")
    ax.set_title("Cost/quality knob")
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)
    return path


def report_markdown(results: dict[str, Any], plots: dict[str, Path]) -> str:
    """The Markdown report: criteria table, query counts table, APGR/CPT table, plot links."""
    routers, experts = results["routers"], _experts(results)
    lines = ["# Router evaluation", ""]
    meta = results.get("meta", {})
    lines += [f"- {k}: {json.dumps(v) if isinstance(v, (dict, list)) else _fmt(v)}" for k, v in meta.items()]
    lines += ["", "## Criteria", ""]
    lines += _md_table(
        ["router", *(_LABELS[c] for c in CRITERIA)],
        [[name, *(s.get(c) for c in CRITERIA)] for name, s in routers.items()],
    )
    lines += ["", "## Query Count per Expert & Routing Method", ""]
    counts = [[name, *(s.get("counts", {}).get(e, 0) for e in experts)] for name, s in routers.items()]
    lines += _md_table(["router", *experts], counts)
    with_apgr = {n: s for n, s in routers.items() if "apgr" in s}
    if with_apgr:
        lines += ["", "## RouteLLM metrics", ""]
        lines += _md_table(
            ["router", "APGR", "APGR 95% CI (bootstrap)", "CPT(50%)", "CPT(80%)"],
            [
                [n, s.get("apgr"), _interval(s.get("apgr_ci95")), s.get("cpt50"), s.get("cpt80")]
                for n, s in with_apgr.items()
            ],
        )
    versus = {n: s["vs_best_expert"] for n, s in routers.items() if "vs_best_expert" in s}
    if versus:
        expert = next(iter(versus.values()))["expert"]
        lines += ["", f"## Against the best single expert ({expert}) at no more than its cost", ""]
        lines += _md_table(
            ["router", "quality", "cost", "difference", "95% CI (bootstrap)"],
            [[n, v["quality"], v["cost"], v["difference"], _interval(v["ci95"])] for n, v in versus.items()],
        )
    lines += ["", "## Plots", ""]
    lines += [f"![{key}]({path.name})" for key, path in plots.items()]
    return "\n".join(lines) + "\n"


def write_report(results: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write report.json, report.md, counts.png, trilemma.png (and knob.png when routers carry knob curves).

    ``results`` = ``{"routers": {name: summary (+ apgr, cpt50, cpt80, curve, knob)}, "meta": {...}}``.
    Returns the paths written by kind (json, markdown, counts, trilemma, knob).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = _jsonable(results)
    plots = {
        "counts": plot_counts(results, out_dir / "counts.png"),
        "trilemma": plot_trilemma(results, out_dir / "trilemma.png"),
    }
    if any(s.get("knob") for s in results["routers"].values()):
        plots["knob"] = plot_knob(results, out_dir / "knob.png")
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(results, indent=2, allow_nan=False))
    md_path = out_dir / "report.md"
    md_path.write_text(report_markdown(results, plots))
    return {"json": json_path, "markdown": md_path, **plots}
