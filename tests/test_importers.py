"""training/importers.py against the real files in the shared datasets folder beside the checkout."""

from __future__ import annotations

import gzip
import json
import logging
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.importers import (
    ROUTELLM_EXPERTS,
    available_alpaca_models,
    import_alpaca_eval,
    import_routellm,
)
from training.table import conform

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"
GPT4, MIXTRAL = "gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"
SOURCE_COUNTS = {"mmlu": 14042, "gsm8k": 1319, "mt_bench": 80}  # SOURCES.md


@pytest.fixture(scope="module")
def data_dir() -> Path:
    needed = ["routellm", "alpaca_eval_prefs", "normalized/alpaca_eval.jsonl.gz"]
    if not all((DATA / p).exists() for p in needed):
        pytest.skip(f"shared datasets not found at {DATA}")
    return DATA


@pytest.fixture(scope="module")
def routellm(data_dir):
    """import_routellm(benchmark, drop_contaminated=...) with default prices, each import done once."""
    return cache(lambda benchmark, drop=False: import_routellm(benchmark, data_dir, drop_contaminated=drop))


@pytest.fixture(scope="module")
def alpaca_prefs(data_dir) -> pd.DataFrame:
    return jsonl(data_dir / "alpaca_eval_prefs" / "alpaca_eval_preferences.jsonl.gz")


def jsonl(path: Path) -> pd.DataFrame:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return pd.DataFrame([json.loads(line) for line in f])


def raw_prompts(data_dir: Path, benchmark: str) -> pd.Series:
    """The per-query prompts straight from the source files (one per query)."""
    root = data_dir / "routellm" / benchmark
    if benchmark == "mmlu":
        files = sorted((root / "responses").glob("mmlu_*.csv.gz"))
        assert len(files) == 57
        return pd.concat([pd.read_csv(f, dtype=str, keep_default_na=False)["prompt"] for f in files])
    if benchmark == "gsm8k":
        return pd.read_csv(root / "gsm8k_responses.csv.gz", dtype=str, keep_default_na=False)["prompt"]
    return jsonl(root / "question.jsonl.gz")["turns"].str[0]


def wide(df: pd.DataFrame, column: str = "quality") -> pd.DataFrame:
    return df.pivot(index="query_id", columns="expert", values=column)


@pytest.mark.parametrize("benchmark", list(SOURCE_COUNTS))
def test_routellm_row_counts_match_source_files(routellm, data_dir, benchmark):
    df = routellm(benchmark)
    n = len(raw_prompts(data_dir, benchmark))
    assert n == SOURCE_COUNTS[benchmark]
    assert len(df) == 2 * n and df["query_id"].nunique() == n
    assert set(df["expert"]) == set(ROUTELLM_EXPERTS.values()) == {GPT4, MIXTRAL}
    assert (df.groupby("query_id")["expert"].nunique() == 2).all()
    assert df["query_id"].str.startswith(f"routellm/{benchmark}/").all()
    assert (df["split"] == "test").all() and (df["error"] == "").all()
    assert df[["nll", "bertsim", "inference_s"]].isna().all().all()
    assert df["quality"].between(0, 1).all()
    pd.testing.assert_frame_equal(conform(df), df)


@pytest.mark.parametrize(("benchmark", "strong", "weak"), [("mmlu", 0.806, 0.681), ("gsm8k", 0.857, 0.638)])
def test_routellm_accuracy_matches_sources(routellm, benchmark, strong, weak):
    acc = routellm(benchmark).groupby("expert")["quality"].mean()
    assert acc[GPT4] == pytest.approx(strong, abs=0.001)
    assert acc[MIXTRAL] == pytest.approx(weak, abs=0.001)
    assert set(routellm(benchmark)["quality"]) == {0.0, 1.0}


@pytest.mark.parametrize("benchmark", list(SOURCE_COUNTS))
def test_routellm_matches_derived_labels(routellm, data_dir, benchmark):
    """Per query, prompt and scores agree with SOURCES.md's derived routellm_labels.jsonl.gz."""
    labels = jsonl(data_dir / "routellm" / "routellm_labels.jsonl.gz")
    labels = labels[labels["benchmark"] == benchmark]
    labels.index = labels["id"].str.replace("routellm/gsm8k/gsm8k/", "routellm/gsm8k/")
    df = routellm(benchmark)
    scale = 10.0 if benchmark == "mt_bench" else 1.0
    q = wide(df).loc[labels.index]
    np.testing.assert_allclose(q[GPT4] * scale, labels["strong_score"].astype(float))
    np.testing.assert_allclose(q[MIXTRAL] * scale, labels["weak_score"].astype(float))
    prompts = df.drop_duplicates("query_id").set_index("query_id")["query"].loc[labels.index]
    assert (prompts == labels["prompt"]).all()


def test_mt_bench_domains_and_answers(routellm):
    df = routellm("mt_bench")
    assert df.drop_duplicates("query_id")["domain"].value_counts().to_dict() == {
        "general": 50,
        "math": 10,
        "code": 10,
        "science": 10,
    }
    assert (df["answer"] != "").all() and (df["source"] == "mt_bench").all()


@pytest.mark.parametrize("benchmark", list(SOURCE_COUNTS))
def test_contaminated_prompts_dropped(routellm, data_dir, benchmark, caplog):
    listed = set(jsonl(data_dir / "routellm" / benchmark / "contaminated_prompts.jsonl.gz")["eval_prompt"])
    prompts = raw_prompts(data_dir, benchmark)
    present = listed & set(prompts)
    assert present and int(prompts.isin(listed).sum()) == len(present)  # each listed prompt occurs once
    full = routellm(benchmark)
    with caplog.at_level(logging.INFO, logger="training.importers"):
        kept = routellm(benchmark, True)
    assert full["query_id"].nunique() - kept["query_id"].nunique() == len(present)
    assert len(full) - len(kept) == 2 * len(present)
    assert not kept["query"].isin(listed).any()
    assert f"dropped {len(present)} contaminated" in caplog.text


@pytest.mark.parametrize("benchmark", list(SOURCE_COUNTS))
def test_routellm_tokens_and_costs(routellm, benchmark):
    df = routellm(benchmark)
    assert (df["input_tokens"] == np.ceil(df["query"].str.len() / 4)).all()
    if benchmark == "mmlu":
        assert (df["output_tokens"] == 1).all() and (df["answer"] == "").all()
    else:
        assert (df["output_tokens"] == np.ceil(df["answer"].str.len() / 4)).all()
    price = df["expert"].map({GPT4: 24.7, MIXTRAL: 0.24})
    np.testing.assert_allclose(df["cost"], (df["input_tokens"] + df["output_tokens"]) * price / 1e6)


def test_routellm_custom_prices(data_dir):
    df = import_routellm("gsm8k", data_dir, strong_price=10.0, weak_price=1.0)
    price = df["expert"].map({GPT4: 10.0, MIXTRAL: 1.0})
    np.testing.assert_allclose(df["cost"], (df["input_tokens"] + df["output_tokens"]) * price / 1e6)
    assert df.loc[df["query_id"] == "routellm/gsm8k/3", "source"].eq("gsm8k").all()


def test_routellm_unknown_benchmark(data_dir):
    with pytest.raises(ValueError, match="mt_bench"):
        import_routellm("hellaswag", data_dir)


def test_available_alpaca_models(data_dir, alpaca_prefs):
    models = available_alpaca_models(data_dir)
    assert models == sorted(set(alpaca_prefs["model"])) and len(models) == 57
    assert {"gpt-3.5-turbo-1106", "phi-2", "alpaca-7b_verbose"} <= set(models)


@pytest.mark.parametrize(
    "models", [["gpt-3.5-turbo-1106", "phi-2"], ["alpaca-7b_verbose", "phi-2", "claude-2.1"]]
)
def test_alpaca_eval(data_dir, alpaca_prefs, models, caplog):
    prefs = alpaca_prefs[alpaca_prefs["model"].isin(models)]
    common = set.intersection(*(set(prefs.loc[prefs["model"] == m, "id"]) for m in models))
    prices = {models[0]: 3.0}
    with caplog.at_level(logging.INFO, logger="training.importers"):
        df = import_alpaca_eval(models, data_dir, prices=prices)
    assert len(df) == len(models) * len(common)
    assert set(df["query_id"]) == common and set(df["expert"]) == set(models)
    assert f"{len(common)} instructions" in caplog.text
    assert df["quality"].between(0, 1).all()
    by_row = prefs.set_index(["id", "model"]).loc[list(zip(df["query_id"], df["expert"]))]
    np.testing.assert_allclose(df["quality"], by_row["preference"].astype(float) - 1)
    assert (df["input_tokens"] == np.ceil(df["query"].str.len() / 4)).all()
    np.testing.assert_array_equal(df["output_tokens"], np.ceil(by_row["model_output_chars"] / 4))
    price = df["expert"].map(lambda m: prices.get(m, 1.0))
    np.testing.assert_allclose(df["cost"], (df["input_tokens"] + df["output_tokens"]) * price / 1e6)
    assert (df[["domain", "source", "split", "answer"]] == ["general", "alpaca_eval", "test", ""]).all().all()
    pd.testing.assert_frame_equal(conform(df), df)


def test_alpaca_eval_unknown_model(data_dir):
    with pytest.raises(ValueError, match="available: .*gpt-3.5-turbo-1106"):
        import_alpaca_eval(["gpt-3.5-turbo-1106", "no-such-model"], data_dir)
    with pytest.raises(ValueError):
        import_alpaca_eval([], data_dir)
