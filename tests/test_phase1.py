"""Phase 1 and the whole pipeline against real experts: Ray Serve + two vLLM tiny-model engines (CPU).

The session's tiny app (``tiny_server``: configs/tiny_cpu.yaml, experts alpha and beta) answers;
generation uses its running deployments by handle, the pipeline trains real routers and the app is
then updated in place to route with the trained one, checked over HTTP (the module's last test).
"""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from deployments.config import load_serve_config
from router.config import PolicyConfig
from tests.conftest import REPO, SHARED_DATA, TINY_APP

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

CONFIG_PATH = REPO / "configs/tiny_cpu.yaml"
CONFIG = load_serve_config(CONFIG_PATH)
APP = TINY_APP


def instructions(path: Path, per_domain: int = 2) -> tuple[Path, int]:
    """A small instruction file: real router_mix rows (both splits) plus two bad ones; its size."""
    rows: dict[tuple[str, str], list[dict]] = {}
    with gzip.open(SHARED_DATA / "router_mix.jsonl.gz", "rt") as f:
        for line in f:
            row = json.loads(line)
            group = rows.setdefault((row["domain"], row["split"]), [])
            if len(group) < per_domain and len(row["instruction"]) + len(row["reference"]) < 600:
                group.append(row)
    good = [r for group in rows.values() for r in group]
    bad = [
        {"id": "bad/empty-reference", "instruction": "What is 2 + 2?", "reference": " ", "domain": "math"},
        {"id": "bad/too-long", "instruction": "word " * 3000, "reference": "ok", "domain": "general"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in good + bad))
    return path, len(good) + len(bad)


def test_generate_fills_the_table_and_reports_bad_rows(tiny_server, tmp_path):
    from training.generate import generate

    data, n = instructions(tmp_path / "data.jsonl")
    table = generate(CONFIG, data, tmp_path / "table.parquet", app_name=APP)
    assert len(table) == n * 2 and set(table["expert"]) == {"alpha", "beta"}
    assert table.equals(pd.read_parquet(tmp_path / "table.parquet").astype(table.dtypes))

    errors = table.set_index(["query_id", "expert"])["error"]
    assert errors[("bad/empty-reference", "alpha")] == "empty reference"
    assert (
        "context length" in errors[("bad/too-long", "beta")] or "too long" in errors[("bad/too-long", "beta")]
    )
    ok = table[table["error"] == ""]
    assert len(ok) == (n - 2) * 2
    assert (ok["nll"] > 0).all() and ok["bertsim"].between(-1, 1).all()
    assert (
        (ok["input_tokens"] > 0).all() and (ok["output_tokens"] > 0).all() and (ok["inference_s"] > 0).all()
    )
    for name in ("alpha", "beta"):
        rows, price = ok[ok["expert"] == name], CONFIG.expert(name).price
        expected = (
            rows["input_tokens"] * price.input_per_1m + rows["output_tokens"] * price.output_per_1m
        ) / 1e6
        assert np.allclose(rows["cost"], expected)
    assert (ok["quality"] == ok["bertsim"]).all() and set(ok["split"]) == {"train", "test"}


def test_the_nll_prompt_is_the_prompt_the_expert_answers(tiny_server, tmp_path):
    """The reference NLL is scored right after exactly the prompt the engine generates from."""
    from training.generate import ExpertCalls, generate, load_instructions

    data, _ = instructions(tmp_path / "data.jsonl", per_domain=1)
    table = generate(CONFIG, data, tmp_path / "t.parquet", app_name=APP, limit=3)
    calls = ExpertCalls(CONFIG.model_dump(mode="json"), APP)
    queries = load_instructions(data, limit=3).set_index("query_id")
    for row in table[table["error"] == ""].to_dict("records"):
        prompt, reference = calls.nll_prompt({**row, "reference": queries.loc[row["query_id"], "reference"]})
        assert len(prompt) == row["input_tokens"] and reference


def test_an_interrupted_run_resumes_without_losing_or_repeating_rows(tiny_server, tmp_path):
    from training.generate import generate

    data, n = instructions(tmp_path / "data.jsonl")
    out = tmp_path / "table.parquet"
    seen: list[int] = []

    def stop_after_first_batch(done: int, total: int, rate: float) -> None:
        seen.append(done)
        raise KeyboardInterrupt  # as Ctrl-C would, right after a finished batch was stored

    with pytest.raises(KeyboardInterrupt):
        generate(CONFIG, data, out, app_name=APP, batch_size=4, progress=stop_after_first_batch)
    first = seen[0]
    assert 0 < first < n * 2 and not out.exists()

    resumed: list[int] = []
    table = generate(
        CONFIG, data, out, app_name=APP, batch_size=4, progress=lambda d, t, r: resumed.append(d)
    )
    assert resumed[0] > first and resumed[-1] == n * 2  # it went on from the stored rows
    assert len(table) == n * 2 and not table.duplicated(["query_id", "expert"]).any()
    again: list[int] = []
    assert len(generate(CONFIG, data, out, app_name=APP, progress=lambda *a: again.append(1))) == n * 2
    assert again == []  # nothing left to do


def test_a_run_whose_expert_calls_actors_are_killed_completes_every_pair_once(tiny_server, tmp_path):
    """The ExpertCalls actors of the Ray Data pipeline are killed with SIGKILL while they work on a
    batch, as if their node were lost: Ray Data restarts them and retries their batches; every
    (query, expert) pair ends up in the table exactly once."""
    import signal
    import threading
    import time

    import psutil

    from training.generate import generate

    data, n = instructions(tmp_path / "data.jsonl", per_domain=4)
    killed: list[int] = []
    stop = threading.Event()

    def kill_working_actors() -> None:  # Ray titles an actor's process by its class and method
        while not stop.is_set() and not killed:
            for proc in psutil.process_iter(["cmdline"]):
                if "MapBatches(ExpertCalls)).submit" in " ".join(proc.info["cmdline"] or []):
                    proc.send_signal(signal.SIGKILL)
                    killed.append(proc.pid)
            time.sleep(0.02)

    killer = threading.Thread(target=kill_working_actors)
    killer.start()
    try:
        table = generate(CONFIG, data, tmp_path / "table.parquet", app_name=APP, batch_size=4)
    finally:
        stop.set()
        killer.join()
    assert killed, "no ExpertCalls actor was seen working"
    assert len(table) == n * 2 and not table.duplicated(["query_id", "expert"]).any()
    assert (table["error"] != "").sum() == 2 * 2  # only the two bad rows, for each expert


def test_a_changed_config_generates_only_the_pairs_of_new_or_changed_experts(tiny_server, tmp_path, capsys):
    from deployments.config import AppConfig
    from training.generate import generate

    data, n = instructions(tmp_path / "data.jsonl", per_domain=1)
    out = tmp_path / "table.parquet"
    before = generate(CONFIG, data, out, app_name=APP).set_index(["query_id", "expert"])
    doc = CONFIG.model_dump(mode="json")
    for expert in doc["experts"]:
        if expert["name"] == "alpha":
            expert["sampling"]["max_tokens"] = 3  # its answers would differ: generated again
        else:
            expert["price"]["output_per_1m"] = 99.0  # a price only: rows kept, cost recomputed
    changed = AppConfig.model_validate(doc)
    capsys.readouterr()
    table = generate(changed, data, out, app_name=APP, progress=lambda *a: None)
    assert f"{n} of {2 * n} (query, expert) pairs already stored; generating {n}" in capsys.readouterr().out
    table = table.set_index(["query_id", "expert"])
    alpha = table.xs("alpha", level="expert")
    assert (alpha.loc[alpha["error"] == "", "output_tokens"] <= 3).all()
    beta, beta_before = table.xs("beta", level="expert"), before.xs("beta", level="expert")
    assert beta["answer"].equals(beta_before["answer"])  # reused, not regenerated
    answered = beta["error"] == ""
    expected = (
        beta["input_tokens"] * changed.expert("beta").price.input_per_1m + beta["output_tokens"] * 99.0
    ) / 1e6
    assert np.allclose(beta.loc[answered, "cost"], expected[answered])

    doc["experts"] = [e for e in doc["experts"] if e["name"] == "alpha"]  # beta removed
    calls: list[int] = []
    only_alpha = generate(
        AppConfig.model_validate(doc), data, out, app_name=APP, progress=lambda *a: calls.append(1)
    )
    assert calls == [] and set(only_alpha["expert"]) == {"alpha"} and len(only_alpha) == n


def test_pipeline_trains_a_router_that_the_app_then_serves(tiny_server, tmp_path):
    import yaml
    from ray import serve

    from deployments.app import bind_app
    from router.policy import Message, build_policy
    from training.pipeline import run_pipeline

    data, _ = instructions(tmp_path / "data.jsonl", per_domain=4)
    result = run_pipeline(
        CONFIG_PATH, tmp_path / "run", data, app_name=APP, router_kinds=("mlp", "bert", "knn")
    )
    run = tmp_path / "run"
    sizes = result["artifact_mb"]
    small = [kind for kind, mb in sizes.items() if mb <= result["max_artifact_mb"]]
    assert sizes["bert"] > 10 > sizes["knn"]  # the fine-tuned encoder is too large to prefer
    assert result["router"] == max(small, key=lambda k: (result["test"][k]["quality"], -sizes[k]))
    assert {"mlp", "bert", "knn", "random", "zero", "optimal"} <= set(result["test"])
    assert (run / "report" / "report.md").exists() and (run / "report" / "counts.png").exists()

    serving = yaml.safe_load((run / "serve_config.yaml").read_text())["applications"][0]
    source = yaml.safe_load(CONFIG_PATH.read_text())["applications"][0]
    assert serving["args"] == source["args"]  # the experts' deployments stay as they are
    [ingress] = [d for d in serving["deployments"] if d["name"] == "ingress"]
    rollout = ingress["user_config"]["policy"]
    assert rollout["name"] == "trained"  # the kind is the artifact's own
    assert Path(rollout["args"]["artifact"]).resolve() == (run / "router").resolve()
    assert json.loads((run / "router" / "router.json").read_text())["kind"] == result["router"]

    # The rollout as Serve applies the file: same args, the ingress's user_config changed in place.
    try:
        rollout_app = bind_app(serving["args"], ingress["user_config"])
        serve.run(rollout_app, name=APP, route_prefix=f"/{APP}", blocking=False)
        policy = build_policy(PolicyConfig.model_validate(rollout), CONFIG.expert_names)
        queries = [
            "Solve 12 * 7 and explain.",
            "Write a Python function that reverses a list.",
            "What is DNA?",
        ]
        for text in queries:
            expected = policy.route([Message("user", text)]).expert
            reply = httpx.post(
                f"{tiny_server}/predict", json={"messages": [{"role": "user", "content": text}]}, timeout=120
            )
            assert reply.status_code == 200, reply.text
            assert reply.json()["expert"] == expected
            status = httpx.get(f"{tiny_server}/status", timeout=30).json()
            assert status["policy"]["kind"] == result["router"]
    finally:  # the session's tiny app routes by its own policy again, for whichever module comes next
        original = source["args"]["policy"]
        serve.run(
            bind_app(source["args"], {"policy": original}), name=APP, route_prefix=f"/{APP}", blocking=False
        )
        deadline = time.monotonic() + 120
        while httpx.get(f"{tiny_server}/status", timeout=30).json()["policy"]["name"] != original["name"]:
            assert time.monotonic() < deadline, "the tiny app's own policy did not come back"
            time.sleep(0.5)
