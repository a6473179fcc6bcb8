"""The routers: soft labels, the cost knob, training (local and Ray Train), artifacts, serving policy."""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from router.config import PolicyConfig
from router.knob import calibrate, choose
from router.policy import Message, build_policy
from router.trained import load_model
from tests.conftest import domain_table
from training.soft_labels import soft_labels
from training.table import to_matrices, write_table
from training.train import fit_local, train

pytestmark = pytest.mark.timeout(900)


def test_soft_labels_are_a_tempered_softmax():
    q = np.array([[0.2, 0.8], [0.5, 0.5]])
    labels = soft_labels(q, temperature=0.3)
    assert np.allclose(labels.sum(axis=1), 1)
    expected = np.exp(0.8 / 0.3) / (np.exp(0.2 / 0.3) + np.exp(0.8 / 0.3))
    assert labels[0, 1] == pytest.approx(expected) and np.allclose(labels[1], 0.5)
    assert soft_labels(q, 1e-3)[0].round(6).tolist() == [0.0, 1.0]  # cold: one-hot on the best
    assert np.allclose(soft_labels(q, 1e3), 0.5, atol=1e-3)  # hot: uniform
    with pytest.raises(ValueError):
        soft_labels(q, 0)


def test_knob_trades_quality_for_price_and_calibrates_to_a_share():
    rng = np.random.default_rng(0)
    scores = rng.random((1000, 3))
    costs = np.array([10.0, 1.0, 0.1])
    assert (choose(scores, costs, 0.0) == scores.argmax(1)).all()
    assert (choose(scores, costs, 1e6) == 2).all()  # a huge weight: always the cheapest
    for share in (0.05, 0.1, 0.25):  # the priciest expert's share falls as the weight grows
        weight = calibrate(scores, costs, expert=0, target_share=share)
        assert np.mean(choose(scores, costs, weight) == 0) == pytest.approx(share, abs=0.01)
    weight = calibrate(scores, costs, expert=2, target_share=0.8)  # the cheapest one's share rises
    assert np.mean(choose(scores, costs, weight) == 2) == pytest.approx(0.8, abs=0.01)
    assert calibrate(scores, costs, expert=0, target_share=0.9) == 0.0  # out of reach: the closest


def test_knob_takes_expected_costs_per_query():
    from training.evaluate import cheapest_weight

    scores = np.array([[0.6, 0.5], [0.6, 0.5]])
    costs = np.array([[10.0, 1.0], [1.0, 10.0]])  # expert 0 is dear on query 0, cheap on query 1
    assert choose(scores, costs, 0.0).tolist() == [0, 0]
    assert choose(scores, costs, 0.5).tolist() == [1, 0]
    assert choose(scores, costs[0], 0.5).tolist() == [1, 1]  # (m,): the same costs for every query
    assert choose(scores, costs, cheapest_weight(scores, costs)).tolist() == [1, 0]


def test_mlp_features_equal_the_vectorizers_own_tfidf():
    from router.kinds._tfidf import fit_vectorizer
    from router.kinds.mlp import TfidfBags

    texts = ["Solve 2x + 3 = 7 for x.", "Write a Python function to sort a list", "what is an enzyme"]
    vectorizer = fit_vectorizer(texts)
    queries = ["solve the python enzyme enzyme", "nothing known here", "", "Sort 2x sort"]
    dense = vectorizer.transform(queries).toarray()
    for row, query in enumerate(queries):
        indices, weights = TfidfBags(vectorizer).analyse(query)
        mine = np.zeros(dense.shape[1])
        mine[indices] = weights
        assert np.allclose(mine, dense[row], atol=1e-6)


def test_mlp_training_analyses_each_query_once_and_serving_scores_as_the_trained_module(monkeypatch):
    from collections import Counter

    import torch

    from router.kinds import mlp
    from training.neural import fit_epochs

    analysed = Counter()
    analyse = mlp.TfidfBags.analyse
    counted = lambda self, text: analysed.update([text]) or analyse(self, text)  # noqa: E731
    monkeypatch.setattr(mlp.TfidfBags, "analyse", counted)
    texts = [f"question {i} about {topic}" for i in range(40) for topic in ("maths", "code")]
    targets = np.tile([[0.8, 0.2], [0.2, 0.8]], (40, 1)).astype(np.float32)
    settings = mlp.KIND.configure({"epochs": 3, "batch_size": 16})
    prepared = mlp.prepare(texts, settings)
    model = fit_epochs(mlp.build_model(2, settings, **prepared), texts, targets, settings)
    assert set(analysed.values()) == {1} and len(analysed) == len(texts)  # 3 epochs, one analysis each
    router = mlp.from_model(["a", "b"], np.array([1.0, 2.0]), settings, model, **prepared)
    queries = ["question 1 about maths", "question 7 about code", "unknown words only", ""]
    with torch.inference_mode():
        expected = torch.softmax(model.eval()(queries), dim=-1).numpy()
    assert np.allclose(router.scores(queries), expected, atol=1e-5)  # numpy serving = the torch module
    router.scores(["question 1 about maths"] * 3)
    assert analysed["question 1 about maths"] == 1 + 2 + 3  # trained once, scored twice above: no memo


def test_an_mlp_artifact_saved_with_torch_weights_still_loads(tmp_path):
    """Artifacts before 2026-12-05 stored the torch state dict (``mlp.pt``); they load and score alike."""
    import torch

    from router.kinds import mlp
    from router.trained import load_model
    from training.neural import fit_epochs

    texts = [f"question {i} about {topic}" for i in range(20) for topic in ("maths", "code")]
    targets = np.tile([[0.8, 0.2], [0.2, 0.8]], (20, 1)).astype(np.float32)
    settings = mlp.KIND.configure({"epochs": 2, "batch_size": 16})
    prepared = mlp.prepare(texts, settings)
    model = fit_epochs(mlp.build_model(2, settings, **prepared), texts, targets, settings)
    router = mlp.from_model(["a", "b"], np.array([1.0, 2.0]), settings, model, **prepared)
    folder = router.save(tmp_path / "new")
    (folder / "mlp.npz").unlink()
    state = {k: v for k, v in model.state_dict().items()}
    torch.save(state, folder / "mlp.pt")
    assert np.allclose(load_model(folder).scores(texts[:5]), router.scores(texts[:5]), atol=1e-6)


@pytest.fixture(scope="module")
def matrices():
    m = to_matrices(domain_table())
    return m.split("train"), m.split("test")


@pytest.mark.parametrize(
    "kind, config",
    [
        ("mlp", {}),
        ("knn", {}),
        ("knn_weighted", {}),
        ("cluster", {}),
        ("pointwise", {}),
        ("pointwise", {"features": "tfidf", "C": 10.0}),
        ("pointwise", {"features": "embedding+stats"}),
        ("pointwise", {"features": "tfidf+stats"}),
        ("ensemble", {}),
        pytest.param("bert", {"epochs": 2, "max_length": 64}, marks=pytest.mark.slow),
    ],
)
def test_each_router_learns_the_domain_signal_and_round_trips(kind, config, matrices, tmp_path):
    train_m, test_m = matrices
    router = fit_local(kind, train_m, temperature=0.1, config=config)
    scores = router.scores(test_m.queries)
    accuracy = float(np.mean(scores.argmax(1) == test_m.quality.argmax(1)))
    chance = 1 / len(test_m.experts)
    assert accuracy > chance + 0.3, f"{kind}: accuracy {accuracy:.2f} vs chance {chance:.2f}"
    # One self-describing artifact: the same predictions after save/load.
    loaded = load_model(router.save(tmp_path / "artifact"))
    assert loaded.kind == kind and loaded.experts == router.experts
    assert np.allclose(loaded.scores(test_m.queries[:25]), scores[:25], atol=1e-3)
    assert np.allclose(loaded.expected_costs, train_m.cost.mean(0))
    assert np.allclose(loaded.predict(test_m.queries[:25])[1], router.predict(test_m.queries[:25])[1])


def kill_at_first_checkpoint(runs: Path, process_marker: str, killed: list[int]) -> None:
    """Wait until Ray Train has registered a checkpoint under ``runs`` (its checkpoint manager's
    snapshot is written), then SIGKILL one process whose command line (Ray's process title) contains
    ``process_marker``, as a lost node or the OOM killer would."""
    import psutil

    deadline = time.monotonic() + 300
    while not list(runs.glob("*/checkpoint_manager_snapshot.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    for proc in psutil.process_iter(["cmdline"]):
        if process_marker in " ".join(proc.info["cmdline"] or []):
            proc.send_signal(signal.SIGKILL)
            killed.append(proc.pid)
            return


@pytest.mark.slow
def test_ray_train_job_on_two_cpu_workers_survives_a_killed_worker(tmp_path, serve_cluster):
    """Ray Train on two CPU workers (on the session's cluster); one worker process is killed after
    the first epoch's checkpoint: the run restarts its workers from the last checkpoint and finishes
    every epoch."""
    write_table(domain_table(600, 150), tmp_path / "table.parquet")
    serve_cluster.start()
    killed: list[int] = []
    killer = threading.Thread(
        target=kill_at_first_checkpoint, args=(tmp_path / "runs", "RayTrainWorker", killed)
    )
    killer.start()
    try:
        router = train(
            tmp_path / "table.parquet",
            "mlp",
            tmp_path / "mlp",
            config={"epochs": 30, "batch_size": 32},
            num_workers=2,
            storage_path=tmp_path / "runs",
        )
    finally:
        killer.join()
    assert killed, "no Ray Train worker was found to kill"
    epochs = router.metrics["epochs"]
    assert router.metrics["resumed"]  # the last reports came from restarted workers
    # every epoch reported once: the restart went on from the checkpoint, not from scratch
    assert [e["epoch"] for e in epochs] == list(range(30))
    assert epochs[-1]["loss"] < epochs[0]["loss"]
    loaded = load_model(tmp_path / "mlp")
    test_m = to_matrices(domain_table(600, 150)).split("test")
    accuracy = np.mean(loaded.scores(test_m.queries).argmax(1) == test_m.quality.argmax(1))
    assert accuracy > 0.5, accuracy


def test_trained_artifact_is_a_serving_policy(matrices, tmp_path):
    train_m, test_m = matrices
    router = fit_local("mlp", train_m)
    router.save(tmp_path / "mlp")
    experts = [*train_m.experts, "extra"]
    policy = build_policy(PolicyConfig(name="trained", args={"artifact": str(tmp_path / "mlp")}), experts)
    assert policy.model.kind == "mlp"  # read from the artifact
    texts = test_m.queries[:20]
    expected = [router.experts[i] for i in router.scores(texts).argmax(1)]
    decisions = [policy.route([Message("system", "Be brief."), Message("user", t)]) for t in texts]
    assert [d.expert for d in decisions] == expected  # the policy is the artifact's choice
    assert all(d.ranking[-1] == "extra" for d in decisions)  # unknown to the artifact: never routed to
    # The knob: a huge cost weight sends every query to the cheapest expert instead.
    cheapest = train_m.experts[int(np.argmin(train_m.cost.mean(0)))]
    assert {policy.route([Message("user", t)], cost_weight=1e6).expert for t in texts} == {cheapest}
    assert policy.route([Message("user", texts[0])], candidates=["code", "general"]).expert in {
        "code",
        "general",
    }
    with pytest.raises(ValueError, match="holds a 'mlp' router, not 'knn'"):
        build_policy(PolicyConfig(name="knn", args={"artifact": str(tmp_path / "mlp")}), experts)


def test_policy_follows_changed_experts_with_warnings_instead_of_failing(matrices, tmp_path, caplog):
    import logging

    train_m, test_m = matrices
    fit_local("knn", train_m).save(tmp_path / "knn")
    router = load_model(tmp_path / "knn")
    removed, kept = train_m.experts[0], list(train_m.experts[1:])
    args = {"artifact": str(tmp_path / "knn")}
    with caplog.at_level(logging.WARNING):
        policy = build_policy(PolicyConfig(name="knn", args=args), [*kept, "new"])
    assert policy.unscored == ("new",)
    assert f"dropped: ['{removed}']" in caplog.text and "cannot score experts ['new']" in caplog.text
    texts = test_m.queries[:20]
    expected = [kept[i] for i in router.scores(texts)[:, 1:].argmax(1)]
    decisions = [policy.route([Message("user", t)]) for t in texts]
    assert [d.expert for d in decisions] == expected and all(d.ranking[-1] == "new" for d in decisions)
    with pytest.raises(ValueError, match="knows none of the configured experts"):
        build_policy(PolicyConfig(name="knn", args=args), ["other"])


def test_every_kind_is_one_registered_module_and_every_list_comes_from_the_registry():
    import subprocess
    import sys

    from router import kinds
    from router.policy import available_policies

    assert {"mlp", "bert", "knn", "knn_weighted", "cluster"} <= set(kinds.names())
    for name in kinds.names():
        spec = kinds.load(name)
        assert spec.name == spec.model.kind == name and spec.targets in ("soft_labels", "quality")
        assert (spec.fit is None) == spec.neural and issubclass(spec.settings, kinds.Settings)
        if kinds.is_neural(name):
            assert all(callable(f) for f in (spec.prepare, spec.build_model, spec.from_model))
            assert "epochs" in spec.grid  # the neural kinds' epochs are chosen by nested CV too
        assert set(spec.grid) <= set(spec.settings.model_fields), name
    assert set(kinds.names()) <= set(available_policies())
    assert kinds.parse("all") == kinds.names()
    with pytest.raises(ValueError, match="unknown router kind 'nope'; known: bert, cluster"):
        kinds.parse("mlp,nope")
    helptext = subprocess.run(
        [sys.executable, "-m", "training.cli", "train", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert all(name in helptext for name in kinds.names())


def test_bert_router_loads_half_precision_weights_as_fp32_and_trains_them(tmp_path):
    """Half-precision weights on disk (transformers 5 would keep them fp16) load as fp32, and an
    epoch on them gives a finite loss. (The GPU path of ``device: auto`` needs a GPU: not tested.)"""
    import torch
    from safetensors.torch import load_file, save_file

    from router.bert_model import EncoderClassifier
    from router.encoder import resolve_encoder
    from training.neural import adamw, batches, train_epoch

    source = Path(resolve_encoder())
    half = tmp_path / "half"
    half.mkdir()
    for path in source.iterdir():
        if path.is_file() and path.name != "model.safetensors":
            (half / path.name).write_bytes(path.read_bytes())
    weights = load_file(source / "model.safetensors")
    save_file({k: v.half().contiguous() for k, v in weights.items()}, half / "model.safetensors")
    model = EncoderClassifier(str(half), n_experts=3)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    texts, targets = ["What is 2 + 2?", "Name a capital city."] * 4, np.eye(3)[[0, 1] * 4]
    loss = train_epoch(model, adamw(model, 1e-4), batches(texts, targets, 4, 0))  # fused, as in training
    assert np.isfinite(loss) and {p.dtype for p in model.parameters()} == {torch.float32}


def test_cluster_scores_mix_the_nearest_clusters_by_similarity():
    from router.kinds.cluster import ClusterRouter, ClusterSettings

    quality = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    settings = ClusterSettings(nearest=2, sharpness=10.0)
    router = ClusterRouter(["a", "b"], np.ones(2), settings, np.eye(3), quality)
    scores = router.assignment(np.array([[0.9, 0.1, 0.0], [0.5, 0.5, -1.0]])) @ router.quality
    assert scores[0, 0] > 0.99 and np.allclose(scores[1], [0.5, 0.5])  # third cluster not among nearest 2


def test_cluster_router_predicts_each_experts_cost_on_queries_like_this_one(matrices, tmp_path):
    import dataclasses

    train_m, test_m = matrices
    dear = train_m.experts.index("math")  # the math expert answers math at length: 20x its usual cost
    cost = train_m.cost.copy()
    cost[train_m.domains == "math", dear] *= 20
    settings = {"clusters": 10, "nearest": 1}
    router = fit_local("cluster", dataclasses.replace(train_m, cost=cost), config=settings)
    _, predicted = router.predict(test_m.queries)
    on_math = predicted[test_m.domains == "math", dear].mean()
    elsewhere = predicted[test_m.domains != "math", dear].mean()
    assert on_math > 2 * elsewhere  # clusters mix domains (math beside physics): not all 20x
    assert np.allclose(router.expected_costs, np.nanmean(cost, axis=0))
    loaded = load_model(router.save(tmp_path / "cluster"))
    assert np.allclose(loaded.predict(test_m.queries)[1], predicted, atol=1e-6)
    # Served: the knob weighs the math expert's cost on math queries, not its average.
    args = {"artifact": str(tmp_path / "cluster")}
    policy = build_policy(PolicyConfig(name="cluster", args=args), train_m.experts)

    def penalty(domain: str) -> float:
        texts = [q for q, d in zip(test_m.queries, test_m.domains) if d == domain][:10]
        messages = [[Message("user", text)] for text in texts]
        drops = [policy.scores(m)["math"] - policy.scores(m, cost_weight=0.5)["math"] for m in messages]
        return float(np.mean(drops))

    assert penalty("math") > 2 * penalty("general")


def test_pointwise_predicts_each_experts_probability_of_a_good_answer(matrices):
    import dataclasses

    train_m, test_m = matrices
    binary = dataclasses.replace(train_m, quality=(train_m.quality > 0.6).astype(float))  # 0/1 outcomes
    router = fit_local("pointwise", binary)
    scores = router.scores(test_m.queries)
    assert router.binary and ((scores > 0) & (scores < 1)).all()
    assert np.mean(scores.argmax(1) == test_m.quality.argmax(1)) > 0.6
    # Graded quality: ridge, scores in quality units (the training data's range, roughly).
    graded = fit_local("pointwise", train_m)
    assert not graded.binary and abs(graded.scores(test_m.queries).mean() - train_m.quality.mean()) < 0.1


def test_ensemble_is_the_mean_of_its_members_and_encodes_a_query_once(matrices, monkeypatch):
    from router import encoder

    train_m, test_m = matrices
    router = fit_local("ensemble", train_m, config={"members": ["pointwise", "knn_weighted"]})
    texts = test_m.queries[:10]
    members = [member.scores(texts) for member in router.members]
    calls = []
    real = encoder.load_encoder
    monkeypatch.setattr(
        encoder, "load_encoder", lambda *a, **k: lambda t: calls.append(len(t)) or real(*a, **k)(t)
    )
    assert np.allclose(router.scores(texts), np.mean(members, axis=0))
    assert calls == [10]  # one encoder pass for both members
    with pytest.raises(ValueError, match="'mlp' does not"):
        fit_local("ensemble", train_m, config={"members": ["mlp"]})


@pytest.mark.parametrize(
    ("kind", "config", "named"),
    [
        ("knn", {"kk": 3}, "kk: Extra inputs are not permitted"),
        ("knn_weighted", {"k": 0}, "k: Input should be greater than or equal to 1"),
        ("pointwise", {"features": "words"}, "features: Input should be"),
        ("cluster", {"quantize": "int8", "backend": "torch"}, "quantize needs backend 'onnx'"),
        ("mlp", {"epochs": "many"}, "epochs: Input should be a valid integer"),
        ("ensemble", {"members": ["knn", "nope"]}, "unknown router kind 'nope'"),
    ],
)
def test_a_kinds_settings_are_typed_and_a_wrong_one_is_named_before_any_training(
    matrices, kind, config, named
):
    train_m, _ = matrices
    with pytest.raises(ValueError, match=f"{kind} settings: .*{re.escape(named)}"):
        fit_local(kind, train_m, config=config)


def test_an_artifact_keeps_its_settings_and_one_from_an_older_version_still_loads(matrices, tmp_path):
    import json

    from router.trained import META_FILE, load_model

    train_m, _ = matrices
    folder = fit_local("knn_weighted", train_m, config={"k": 7}).save(tmp_path / "knn")
    assert load_model(folder).config.k == 7 and load_model(folder).config.temperature == 0.1
    meta = json.loads((folder / META_FILE).read_text())
    meta["config"]["retired_setting"] = 1
    (folder / META_FILE).write_text(json.dumps(meta))
    loaded = load_model(folder, {"quantize": "int8"})  # the retired setting is ignored, with a warning
    assert loaded.config.quantize == "int8" and loaded.config.k == 7
