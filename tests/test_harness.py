"""The evaluation harness and the ``expert-router`` CLI, end to end on real tables."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from tests.conftest import SHARED_DATA, domain_table
from training.harness import evaluate_table
from training.table import write_table
from training.train import train

pytestmark = pytest.mark.timeout(600)
REQUIRED = {"quality", "bertsim", "nll", "cost", "throughput", "counts"}


def run_cli(*args: object) -> str:
    """stdout of ``expert-router ARGS`` run as a user would (a separate process)."""
    cmd = [sys.executable, "-m", "training.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return write_table(domain_table(400, 150), tmp_path_factory.mktemp("t") / "domains.parquet")


def test_cross_validation_reports_routers_and_baselines(table, tmp_path):
    epochs = [2, 6]  # a grid that overrides MLP's own epochs (5 / 15 / 40) keeps the test quick
    report = evaluate_table(
        table, tmp_path / "report", folds=3, router_kinds=["mlp"], grid={"epochs": epochs}
    )
    routers = report["routers"]
    assert set(routers) == {"mlp", "random", "zero", "optimal"}
    for name, result in routers.items():
        assert REQUIRED <= set(result), name
    assert report["meta"]["queries"] == 550  # every query scored out of fold
    assert routers["optimal"]["quality"] >= routers["mlp"]["quality"] > routers["random"]["quality"] + 0.2
    assert sum(routers["mlp"]["counts"].values()) == 550
    # nested by default: the epochs chosen per outer fold, among the grid's
    assert [set(c) for c in routers["mlp"]["chosen_per_fold"]] == [{"epochs"}] * 3
    assert all(c["epochs"] in epochs for c in routers["mlp"]["chosen_per_fold"])
    assert report["meta"]["grid"] == {"epochs": epochs}
    written = {p.name for p in (tmp_path / "report").iterdir()}
    assert {"report.json", "report.md", "counts.png", "trilemma.png", "knob.png"} <= written


def test_nested_cross_validation_tunes_on_inner_folds_of_the_training_part_only(table, monkeypatch):
    import numpy as np
    from sklearn.model_selection import KFold

    from router.kinds import cluster
    from training import harness
    from training.table import read_table, to_matrices

    seen: list[set[str]] = []
    real_fit = harness.fit_local

    def recording_fit(kind, m, *args, **kwargs):
        seen.append(set(m.query_ids))
        return real_fit(kind, m, *args, **kwargs)

    monkeypatch.setattr(harness, "fit_local", recording_fit)
    monkeypatch.setattr(cluster, "KIND", dataclasses.replace(cluster.KIND, grid={"clusters": [2, 8]}))
    report = evaluate_table(table, folds=3, router_kinds=["cluster"], inner_folds=2)
    chosen = report["routers"]["cluster"]["chosen_per_fold"]
    assert len(chosen) == 3 and all(c["clusters"] in (2, 8) for c in chosen)
    ids = to_matrices(read_table(table)).query_ids
    per_fold = 2 * 2 + 1  # two settings x two inner folds, then the refit on the outer training part
    assert len(seen) == 3 * per_fold
    for i, (train_idx, test_idx) in enumerate(KFold(3, shuffle=True, random_state=0).split(ids)):
        held_out = set(np.asarray(ids)[test_idx])
        assert all(not (fit & held_out) for fit in seen[i * per_fold : (i + 1) * per_fold])


def test_saved_artifacts_are_scored_on_the_test_split_and_calibrated(table, tmp_path):
    train(table, "mlp", tmp_path / "mlp", use_ray=False)
    report = evaluate_table(table, routers=[tmp_path / "mlp"])
    assert report["meta"]["queries"] == 150
    assert report["routers"]["mlp"]["quality"] > report["routers"]["random"]["quality"]
    out = run_cli(
        "calibrate", "--router", tmp_path / "mlp", "--table", table, "--expert", "science", "--share", "0.1"
    )
    calibrated = json.loads(out)
    assert calibrated["cost_weight"] > 0 and abs(calibrated["share"] - 0.1) < 0.02


def test_cli_imports_and_evaluates_a_two_expert_table_with_routellm_metrics(tmp_path):
    if not (SHARED_DATA / "routellm").exists():
        pytest.skip("shared datasets not found")
    out = run_cli(
        "import", "routellm", "--benchmark", "gsm8k", "--data", SHARED_DATA, "--out", tmp_path / "g.parquet"
    )
    assert "1307 queries" in out
    out = run_cli(
        "evaluate",
        "--table",
        tmp_path / "g.parquet",
        "--folds",
        3,
        "--routers",
        "mlp",
        "--inner-folds",
        0,
        "--json",
    )
    report = json.loads(out)
    for name in ("mlp", "random", "zero", "optimal"):
        assert REQUIRED <= set(report["routers"][name])
    for name in ("mlp", "random", "optimal"):
        assert {"apgr", "cpt50", "cpt80"} <= set(report["routers"][name])
    apgr = {name: report["routers"][name]["apgr"] for name in ("mlp", "random", "optimal")}
    print("APGR", apgr)
    assert apgr["optimal"] > apgr["mlp"] > 0.53  # random is 0.5; 5-fold MLP measured 0.572
    assert abs(apgr["random"] - 0.5) < 0.06
    low, high = report["routers"]["mlp"]["apgr_ci95"]
    assert low < apgr["mlp"] < high and high - low < 0.3


def test_router_against_the_best_single_expert_has_a_bootstrap_interval(table):
    import numpy as np

    from training.evaluate import expected_costs, versus_best_expert
    from training.table import read_table, to_matrices

    m = to_matrices(read_table(table))
    costs = expected_costs(m)
    versus = versus_best_expert(m, m.quality, costs)  # the oracle: far better, interval above zero
    best = int(np.argmax(m.quality.mean(0)))
    assert versus["expert"] == m.experts[best] and versus["cost"] <= versus["expert_cost"] * (1 + 1e-9)
    assert 0 < versus["ci95"][0] < versus["difference"] < versus["ci95"][1]
    noise = versus_best_expert(m, np.random.default_rng(0).random(m.quality.shape), costs)
    assert noise["difference"] < 0 and noise["ci95"][1] < 0  # random routing loses to the best expert


def test_the_pipeline_serves_the_best_router_among_small_artifacts():
    from training.pipeline import best_router

    results = {"bert": {"quality": 0.9}, "knn": {"quality": 0.7}, "cluster": {"quality": 0.7}}
    sizes = {"bert": 87.0, "knn": 0.2, "cluster": 0.05}
    assert best_router(results, sizes, max_mb=10) == "cluster"  # tie on quality: the smaller one
    assert best_router(results, sizes, max_mb=100) == "bert"
    large = {"bert": 87.0, "knn": 20.0, "cluster": 30.0}
    assert best_router(results, large, max_mb=10) == "bert"  # none is small: any size


def test_evaluate_refuses_a_wrong_setting_of_any_kind_before_any_kind_runs(table, monkeypatch):
    from training import harness

    fitted = []
    monkeypatch.setattr(harness, "fit_local", lambda kind, *a, **k: fitted.append(kind))
    with pytest.raises(ValueError, match="mlp settings: epochs: Input should be a valid integer"):
        evaluate_table(table, folds=3, router_kinds=["knn", "mlp"], config={"mlp": {"epochs": "many"}})
    with pytest.raises(ValueError, match=r"--config names kinds not evaluated here \(knn\): \['mpl'\]"):
        evaluate_table(table, folds=3, router_kinds=["knn"], config={"mpl": {"epochs": 5}})
    with pytest.raises(ValueError, match="--grid settings no kind among"):
        evaluate_table(table, folds=3, router_kinds=["mlp"], grid={"temperature": [0.1, 1.0]})
    assert fitted == []  # knn, first in line, never trained
