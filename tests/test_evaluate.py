"""The evaluation harness: criteria, baselines, knob curve, RouteLLM metrics and the report."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest

from training.evaluate import (
    apgr_interval,
    knob_curve,
    optimal_router,
    random_router,
    routellm_metrics,
    summarize,
    write_report,
    zero_router,
)
from training.table import COLUMNS, Matrices, conform, to_matrices

# 4 queries x 2 experts: "big" (dear, better on q1, q2) and "small" (cheap, better on q3, tied on q4).
ROWS = {
    # (query, expert): quality, cost, nll, bertsim, inference_s, input_tokens, output_tokens
    ("q1", "big"): (0.9, 0.010, 1.0, 0.8, 2.0, 100, 50),
    ("q1", "small"): (0.5, 0.001, 2.0, float("nan"), 1.0, 100, 20),
    ("q2", "big"): (0.8, 0.020, float("nan"), 0.7, 4.0, 200, 100),
    ("q2", "small"): (0.6, 0.002, 3.0, 0.4, 1.0, 200, 40),
    ("q3", "big"): (0.4, 0.010, 2.5, 0.3, 2.0, 100, 60),
    ("q3", "small"): (0.7, 0.001, 1.5, 0.6, 1.0, 100, 30),
    ("q4", "big"): (0.5, 0.030, 1.2, 0.5, 6.0, 300, 150),
    ("q4", "small"): (0.5, 0.003, 1.8, 0.5, 2.0, 300, 60),
}
BIG, SMALL = 0, 1  # experts sort by name


def make_table(rows: dict) -> pd.DataFrame:
    records = []
    for (qid, expert), (quality, cost, nll, bertsim, seconds, tin, tout) in rows.items():
        records.append(
            dict(
                query_id=qid, query=f"text of {qid}", domain="", source="unit", split="test",
                expert=expert, answer="", nll=nll, bertsim=bertsim, quality=quality,
                inference_s=seconds, input_tokens=tin, output_tokens=tout, cost=cost, error="",
            )
        )  # fmt: skip
    return conform(pd.DataFrame.from_records(records, columns=list(COLUMNS)))


@pytest.fixture(scope="module")
def tiny() -> Matrices:
    m = to_matrices(make_table(ROWS))
    assert m.experts == ["big", "small"] and list(m.query_ids) == ["q1", "q2", "q3", "q4"]
    return m


def synthetic(n: int = 2000, seed: int = 0) -> Matrices:
    """Two experts: strong is better on average but not on every query."""
    rng = np.random.default_rng(seed)
    weak = rng.uniform(0, 1, n)
    strong = np.clip(weak + rng.normal(0.15, 0.3, n), 0, 1)
    quality = np.stack([strong, weak], axis=1)
    ones = np.ones((n, 2))
    return Matrices(
        query_ids=np.array([f"q{i}" for i in range(n)], dtype=object),
        queries=[""] * n,
        domains=np.array([""] * n, dtype=object),
        splits=np.array(["test"] * n, dtype=object),
        experts=["strong", "weak"],
        quality=quality,
        cost=ones * [1.0, 0.1],
        nll=ones,
        bertsim=quality,
        inference_s=ones,
        output_tokens=ones * 10,
        input_tokens=ones * 10,
    )


def test_summarize_matches_hand_computed(tiny):
    s = summarize(tiny, np.array([BIG, SMALL, BIG, SMALL]))
    # chosen: q1 big, q2 small, q3 big, q4 small
    assert s["quality"] == pytest.approx((0.9 + 0.6 + 0.4 + 0.5) / 4)
    assert s["bertsim"] == pytest.approx((0.8 + 0.4 + 0.3 + 0.5) / 4)
    assert s["nll"] == pytest.approx((1.0 + 3.0 + 2.5 + 1.8) / 4)
    assert s["cost"] == pytest.approx(0.010 + 0.002 + 0.010 + 0.003)
    tokens = (100 + 50) + (200 + 40) + (100 + 60) + (300 + 60)
    assert s["cost_per_1m_tokens"] == pytest.approx(0.025 / tokens * 1e6)
    assert s["throughput"] == pytest.approx((50 + 40 + 60 + 60) / (2.0 + 1.0 + 2.0 + 2.0))
    assert s["counts"] == {"big": 2, "small": 2} and s["n"] == 4
    json.dumps(s, allow_nan=False)  # plain JSON types


def test_summarize_is_nan_aware(tiny):
    s = summarize(tiny, np.array([SMALL, BIG, SMALL, SMALL]))
    # q1 small has no bertsim, q2 big has no nll: they are left out of the means
    assert s["bertsim"] == pytest.approx((0.7 + 0.6 + 0.5) / 3)
    assert s["nll"] == pytest.approx((2.0 + 1.5 + 1.8) / 3)
    only_unknown = tiny.subset(np.array([0]))
    assert summarize(only_unknown, np.array([SMALL]))["bertsim"] is None


def test_summarize_throughput_none_when_times_unknown(tiny):
    m = dataclasses.replace(tiny, inference_s=np.full_like(tiny.inference_s, np.nan))
    assert summarize(m, np.zeros(4, dtype=int))["throughput"] is None


def test_summarize_rejects_bad_choice(tiny):
    with pytest.raises(ValueError):
        summarize(tiny, np.array([0, 1, 2, 0]))
    with pytest.raises(ValueError):
        summarize(tiny, np.array([0, 1]))


def test_zero_router_averages_the_experts(tiny):
    z = zero_router(tiny)
    assert z["quality"] == pytest.approx(((0.9 + 0.8 + 0.4 + 0.5) / 4 + (0.5 + 0.6 + 0.7 + 0.5) / 4) / 2)
    assert z["cost"] == pytest.approx(((0.01 + 0.02 + 0.01 + 0.03) + (0.001 + 0.002 + 0.001 + 0.003)) / 2)
    assert z["bertsim"] == pytest.approx(((0.8 + 0.7 + 0.3 + 0.5) / 4 + (0.4 + 0.6 + 0.5) / 3) / 2)
    assert z["throughput"] == pytest.approx((360 / 14 + 150 / 5) / 2)
    assert z["counts"] == {"big": 2.0, "small": 2.0} and z["n"] == 4


def test_optimal_router_is_the_oracle_and_ties_go_cheaper(tiny):
    # q4 ties on quality (0.5): the cheaper expert (small) wins
    assert optimal_router(tiny).tolist() == [BIG, BIG, SMALL, SMALL]
    assert optimal_router(tiny, "cost").tolist() == [SMALL] * 4
    assert optimal_router(tiny, "nll").tolist() == [BIG, SMALL, SMALL, BIG]  # NaN nll never wins
    best = summarize(tiny, optimal_router(tiny))["quality"]
    assert best == pytest.approx((0.9 + 0.8 + 0.7 + 0.5) / 4)
    with pytest.raises(ValueError):
        optimal_router(tiny, "speed")


def test_random_router_is_seeded_and_uniform():
    m = synthetic()
    a, b = random_router(m, seed=3), random_router(m, seed=3)
    assert (a == b).all() and set(a.tolist()) == {0, 1}
    assert abs(a.mean() - 0.5) < 0.05


def test_knob_curve_endpoints(tiny):
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.5], [0.7, 0.3]])
    costs = np.array([0.02, 0.002])
    curve = knob_curve(tiny, scores, costs)
    assert len(curve) == 40 and curve[0]["cost_weight"] == 0.0
    weights = [p["cost_weight"] for p in curve]
    assert weights == sorted(weights)
    assert curve[0] == {"cost_weight": 0.0, **summarize(tiny, scores.argmax(axis=1))}
    assert curve[-1]["counts"] == {"big": 0, "small": 4}
    assert curve[-1]["cost"] <= curve[0]["cost"]
    huge = knob_curve(tiny, scores, costs, weights=[1e9])
    assert huge[0]["counts"] == {"big": 0, "small": 4}


def test_routellm_metrics_hand_computed(tiny):
    # strong = big, weak = small. Margins: q1 0.8, q2 -0.6, q3 0.1, q4 0.4 -> order q1, q4, q3, q2.
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.5], [0.7, 0.3]])
    r = routellm_metrics(tiny, scores, strong=BIG, weak=SMALL)
    weak_all, strong_all = 0.575, 0.65
    # quality after sending the top k to big: gains (big - small) in order are +0.4, 0, -0.3, +0.2
    quality = [2.3 / 4, 2.7 / 4, 2.7 / 4, 2.4 / 4, 2.6 / 4]
    pgr = [(q - weak_all) / (strong_all - weak_all) for q in quality]  # 0, 4/3, 4/3, 1/3, 1
    assert r["curve"]["x"] == [0, 0.25, 0.5, 0.75, 1]
    assert r["curve"]["quality"] == pytest.approx(quality)
    assert r["curve"]["pgr"] == pytest.approx(pgr)
    apgr = sum((pgr[i] + pgr[i + 1]) / 2 * 0.25 for i in range(4))
    assert r["apgr"] == pytest.approx(apgr)
    assert r["cpt50"] == 0.25 and r["cpt80"] == 0.25
    assert r["strong"] == "big" and r["weak"] == "small"


def test_routellm_ties_are_stable_and_cpt_can_reach_one(tiny):
    # all margins equal: queries go to strong in table order q1, q2, q3, q4
    r = routellm_metrics(tiny, np.zeros((4, 2)), strong=BIG, weak=SMALL)
    assert r["curve"]["quality"] == pytest.approx([2.3 / 4, 2.7 / 4, 2.9 / 4, 2.6 / 4, 2.6 / 4])
    # swap roles: "strong" = small is worse on average; PGR still defined, reaches 1 at x = 1
    r = routellm_metrics(tiny, np.zeros((4, 2)), strong=SMALL, weak=BIG)
    assert r["curve"]["pgr"][-1] == pytest.approx(1.0) and r["cpt80"] is not None


def test_routellm_equal_quality_gives_none(tiny):
    m = tiny.subset(np.array([3]))  # q4: both experts 0.5
    r = routellm_metrics(m, np.zeros((1, 2)), strong=BIG, weak=SMALL)
    assert r["apgr"] is None and r["cpt50"] is None and r["cpt80"] is None
    assert r["curve"]["pgr"] == [None, None]


def test_apgr_oracle_above_random_near_half():
    m = synthetic()
    oracle = routellm_metrics(m, m.quality, strong=0, weak=1)
    rng = np.random.default_rng(1)
    random = routellm_metrics(m, rng.uniform(size=m.quality.shape), strong=0, weak=1)
    assert oracle["apgr"] > 0.5 and oracle["cpt50"] < 0.5
    assert random["apgr"] == pytest.approx(0.5, abs=0.05)
    assert oracle["apgr"] > random["apgr"]


def test_apgr_interval_brackets_the_estimate_and_tells_signal_from_chance():
    m = synthetic()
    oracle = routellm_metrics(m, m.quality, strong=0, weak=1)["apgr"]
    low, high = apgr_interval(m, m.quality, strong=0, weak=1, rounds=400)
    assert low < oracle < high and low > 0.5
    chance = np.random.default_rng(2).uniform(size=m.quality.shape)
    low, high = apgr_interval(m, chance, strong=0, weak=1, rounds=400)
    assert low < 0.5 < high
    # the same seed gives the same interval
    assert apgr_interval(m, chance, 0, 1, rounds=400) == [low, high]


def test_each_resample_s_apgr_is_routellm_s_apgr_of_those_queries():
    """The interval's batched APGR (one row per resample) equals the metric on each resample."""
    from training.evaluate import _apgr, _gain_curve

    m = synthetic()
    scores = np.random.default_rng(3).uniform(size=m.quality.shape) + m.quality
    idx = np.random.default_rng(4).integers(0, len(m), (5, len(m)))
    margin, diff = scores[:, 0] - scores[:, 1], m.quality[:, 0] - m.quality[:, 1]
    batched = _apgr(_gain_curve(margin[idx], diff[idx]))
    each = [routellm_metrics(m.subset(row), scores[row], strong=0, weak=1)["apgr"] for row in idx]
    assert batched == pytest.approx(each) and len(set(each)) == 5


def test_apgr_interval_of_identical_queries_is_exact(tiny):
    # every resample of q1 alone has APGR 0.5 (one query: the trapezoid from 0 to its whole gain)
    q1 = tiny.subset(np.array([0, 0, 0]))
    assert apgr_interval(q1, np.zeros((3, 2)), BIG, SMALL, rounds=50) == pytest.approx([0.5, 0.5])
    assert routellm_metrics(q1, np.zeros((3, 2)), BIG, SMALL)["apgr"] == pytest.approx(0.5)
    # both experts alike in every resample: no interval
    q4 = tiny.subset(np.array([3, 3]))
    assert apgr_interval(q4, np.zeros((2, 2)), BIG, SMALL, rounds=50) == [None, None]


def test_write_report_writes_files_and_json_round_trips(tiny, tmp_path):
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.5], [0.7, 0.3]])
    costs = np.array([0.02, 0.002])
    learned = summarize(tiny, scores.argmax(axis=1))
    metrics = routellm_metrics(tiny, scores, BIG, SMALL)
    learned.update({k: metrics[k] for k in ("apgr", "cpt50", "cpt80")})
    learned["apgr_ci95"] = apgr_interval(tiny, scores, BIG, SMALL, rounds=100)
    learned["knob"] = knob_curve(tiny, scores, costs, weights=np.array([0.0, 0.5, 1e3]))
    results = {
        "routers": {
            "learned": learned,
            "zero": zero_router(tiny),
            "optimal": summarize(tiny, optimal_router(tiny)),
            "random": summarize(tiny, random_router(tiny, seed=0)),
        },
        "meta": {"table": "unit", "split": "test", "experts": tiny.experts, "score_nan": float("nan")},
    }
    paths = write_report(results, tmp_path / "out")
    assert set(paths) == {"json", "markdown", "counts", "trilemma", "knob"}
    for path in paths.values():
        assert path.exists() and path.stat().st_size > 0
    for key in ("counts", "trilemma", "knob"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    back = json.loads(paths["json"].read_text())
    assert back["meta"]["score_nan"] is None
    assert back["routers"]["learned"]["quality"] == learned["quality"]
    assert back["routers"]["zero"] == results["routers"]["zero"]
    assert back["routers"]["learned"]["knob"] == learned["knob"]
    md = paths["markdown"].read_text()
    assert "| learned |" in md and "Query Count per Expert & Routing Method" in md
    assert "| router | big | small |" in md and "APGR" in md
    ci = back["routers"]["learned"]["apgr_ci95"]
    assert f"[{ci[0]:.4g}, {ci[1]:.4g}]" in md
    assert "(counts.png)" in md and "(knob.png)" in md
    assert not math.isnan(back["routers"]["learned"]["apgr"])


def test_write_report_without_knob_skips_its_plot(tiny, tmp_path):
    results = {"routers": {"zero": zero_router(tiny)}, "meta": {}}
    paths = write_report(results, tmp_path)
    assert "knob" not in paths and not (tmp_path / "knob.png").exists()
    assert "APGR" not in paths["markdown"].read_text()
