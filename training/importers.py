"""Importers: public per-query outcome tables -> the labelled table (:mod:`training.table`).

Each importer returns a conformed table (one row per query x expert, all ``split="test"``: these are
held-out evaluation sets; the evaluator makes its own folds). ``nll``, ``bertsim`` and
``inference_s`` are NaN, ``error`` is ''. ``data_dir`` is the shared datasets folder (its layout and
provenance are in its ``SOURCES.md``).

* :func:`import_routellm` - RouteLLM's evals (``routellm/``) for GPT-4-Turbo vs Mixtral-8x7B:
  MMLU and GSM8K (quality = 1.0/0.0 correctness) and MT-Bench (quality = GPT-4 judge score averaged
  over the two turns, / 10). The raw files are read, not the derived ``routellm_labels.jsonl.gz``.
* :func:`import_alpaca_eval` - AlpacaEval 2 per-instruction judge preferences against GPT-4-Turbo
  for chosen models (quality = preference - 1 = the probability the model beat GPT-4-Turbo).

Estimates (the files carry no token counts and no per-query prices):

* tokens = ceil(characters / 4) (:data:`CHARS_PER_TOKEN`, the usual English rule of thumb), for the
  prompt (``input_tokens``) and for the answer (``output_tokens``) where its text or length is known:
  GSM8K responses, MT-Bench turn-1 answers (cut out of the turn-1 judge prompt), AlpacaEval
  ``model_output_chars``.
* MMLU keeps no model text: ``output_tokens`` = 1 (the answer letter). Any other missing answer text
  counts :data:`DEFAULT_OUTPUT_TOKENS` (256) tokens.
* MT-Bench: ``query``/``answer``/tokens cover turn 1 only (what a router sees); ``quality`` averages
  both judged turns.
* cost = (input_tokens + output_tokens) x the expert's blended $/1M price: RouteLLM's published
  figures by default (GPT-4 24.7, Mixtral 0.24); AlpacaEval models 1.0 unless ``prices`` names them.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from training.table import conform

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4
DEFAULT_OUTPUT_TOKENS = 256
DEFAULT_ALPACA_PRICE = 1.0

STRONG, WEAK = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"
#: RouteLLM's model names -> the expert names used in the table.
ROUTELLM_EXPERTS: dict[str, str] = {STRONG: "gpt-4-1106-preview", WEAK: "mixtral-8x7b-instruct-v0.1"}
ROUTELLM_BENCHMARKS = ("mmlu", "gsm8k", "mt_bench")
#: MT-Bench category -> domain (the rest are "general").
MT_BENCH_DOMAINS = {"math": "math", "coding": "code", "stem": "science"}

_META = ["query_id", "query", "domain", "source"]
_TURN1_ANSWER = re.compile(
    r"\[The Start of Assistant's Answer\]\n(.*)\n\[The End of Assistant's Answer\]", re.DOTALL
)


def _jsonl(path: Path) -> pd.DataFrame:
    """A gzipped JSON-lines file, values as parsed (no dtype guessing)."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return pd.DataFrame.from_records([json.loads(line) for line in f if line.strip()])


def _csv(path: Path) -> pd.DataFrame:
    """A gzipped CSV, every cell a string ('NA' and '' stay text)."""
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _correct(col: pd.Series) -> pd.Series:
    """'True'/'False' -> 1.0/0.0; anything else is an error in the file."""
    bad = sorted(set(col) - {"True", "False"})
    if bad:
        raise ValueError(f"column {col.name!r}: expected 'True'/'False', found {bad[:3]}")
    return (col == "True").astype(float)


def _tokens(chars: pd.Series) -> pd.Series:
    return np.ceil(chars / CHARS_PER_TOKEN)


def _labelled(rows: pd.DataFrame, prices: dict[str, float], default_output_tokens: int) -> pd.DataFrame:
    """Finish long rows into the table.

    ``rows``: ``query_id, query, domain, source, expert, quality, answer`` and optionally
    ``output_chars`` (else the answer's length; NaN / no text -> ``default_output_tokens``).
    """
    if "output_chars" not in rows:
        rows = rows.assign(output_chars=rows["answer"].str.len().where(rows["answer"] != ""))
    input_tokens = _tokens(rows["query"].str.len()).astype("int64")
    output_tokens = _tokens(rows["output_chars"].astype(float)).fillna(default_output_tokens).astype("int64")
    return conform(
        rows.assign(
            split="test",
            nll=np.nan,
            bertsim=np.nan,
            inference_s=np.nan,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost=(input_tokens + output_tokens) * rows["expert"].map(prices) / 1e6,
            error="",
        )
    )


def _melt(wide: pd.DataFrame) -> pd.DataFrame:
    """One row per query (``_META``, ``<model>`` quality, optional ``<model>_response``) -> per expert."""
    parts = [
        wide[_META].assign(expert=name, quality=wide[raw], answer=wide.get(f"{raw}_response", ""))
        for raw, name in ROUTELLM_EXPERTS.items()
    ]
    return pd.concat(parts).sort_index(kind="stable").reset_index(drop=True)


def _mmlu(root: Path) -> pd.DataFrame:
    frames = []
    for path in sorted((root / "mmlu" / "responses").glob("mmlu_*.csv.gz")):
        subject = path.name.removeprefix("mmlu_").removesuffix(".csv.gz")
        df = _csv(path)
        df["query_id"] = [f"routellm/mmlu/{subject}/{i}" for i in range(len(df))]
        df["source"] = f"mmlu/{subject}"
        frames.append(df)
    if not frames:
        raise FileNotFoundError(f"no mmlu_*.csv.gz under {root / 'mmlu' / 'responses'}")
    df = pd.concat(frames, ignore_index=True)
    return df.assign(query=df["prompt"], domain="general", **{m: _correct(df[m]) for m in ROUTELLM_EXPERTS})


def _gsm8k(root: Path) -> pd.DataFrame:
    df = _csv(root / "gsm8k" / "gsm8k_responses.csv.gz")
    return df.assign(
        query_id=[f"routellm/gsm8k/{i}" for i in range(len(df))],
        query=df["prompt"],
        domain="math",
        source="gsm8k",
        **{m: _correct(df[m]) for m in ROUTELLM_EXPERTS},
    )


def _mt_bench(root: Path) -> pd.DataFrame:
    questions = _jsonl(root / "mt_bench" / "question.jsonl.gz")
    judged = _jsonl(root / "mt_bench" / "judgements.jsonl.gz")
    judged["score"] = judged["score"].astype(float)
    mean_score = judged.groupby(["model", "question_id"])["score"].mean() / 10
    turn1 = judged[judged["turn"].astype(int) == 1].set_index(["model", "question_id"])["user_prompt"]
    answer = turn1.str.extract(_TURN1_ANSWER, expand=False).fillna("")
    qid = questions["question_id"]
    return questions.assign(
        query_id="routellm/mt_bench/" + qid.astype(str),
        query=questions["turns"].str[0],
        domain=questions["category"].map(MT_BENCH_DOMAINS).fillna("general"),
        source="mt_bench",
        **{m: qid.map(mean_score.loc[m]) for m in ROUTELLM_EXPERTS},
        **{f"{m}_response": qid.map(answer.loc[m]).fillna("") for m in ROUTELLM_EXPERTS},
    )


_ROUTELLM_LOADERS = {"mmlu": _mmlu, "gsm8k": _gsm8k, "mt_bench": _mt_bench}


def import_routellm(
    benchmark: str,
    data_dir: Path,
    strong_price: float = 24.7,
    weak_price: float = 0.24,
    drop_contaminated: bool = True,
) -> pd.DataFrame:
    """RouteLLM's per-query outcomes for ``benchmark`` (mmlu, gsm8k, mt_bench) as the labelled table.

    ``data_dir``: the shared datasets folder (or its ``routellm/`` subfolder). ``strong_price`` /
    ``weak_price``: blended $/1M tokens of GPT-4-Turbo / Mixtral. ``drop_contaminated`` drops the
    queries whose prompt is listed in ``<benchmark>/contaminated_prompts.jsonl.gz`` (as RouteLLM does).
    """
    if benchmark not in _ROUTELLM_LOADERS:
        raise ValueError(f"unknown RouteLLM benchmark {benchmark!r}; choose from {ROUTELLM_BENCHMARKS}")
    data_dir = Path(data_dir)
    root = data_dir / "routellm" if (data_dir / "routellm").is_dir() else data_dir
    wide = _ROUTELLM_LOADERS[benchmark](root)
    if drop_contaminated:
        listed = set(_jsonl(root / benchmark / "contaminated_prompts.jsonl.gz")["eval_prompt"])
        hit = wide["query"].isin(listed)
        log.info(
            "routellm/%s: dropped %d contaminated queries (%d prompts listed, %d queries left)",
            benchmark,
            int(hit.sum()),
            len(listed),
            int((~hit).sum()),
        )
        wide = wide[~hit]
    prices = {ROUTELLM_EXPERTS[STRONG]: strong_price, ROUTELLM_EXPERTS[WEAK]: weak_price}
    return _labelled(_melt(wide), prices, 1 if benchmark == "mmlu" else DEFAULT_OUTPUT_TOKENS)


def _alpaca_prefs(data_dir: Path) -> pd.DataFrame:
    return _jsonl(Path(data_dir) / "alpaca_eval_prefs" / "alpaca_eval_preferences.jsonl.gz")


def available_alpaca_models(data_dir: Path) -> list[str]:
    """The models with AlpacaEval preferences in ``data_dir``, sorted."""
    return sorted(_alpaca_prefs(data_dir)["model"].unique())


def import_alpaca_eval(
    models: list[str], data_dir: Path, prices: dict[str, float] | None = None
) -> pd.DataFrame:
    """AlpacaEval 2 outcomes of ``models`` (experts named as in AlpacaEval) as the labelled table.

    Only instructions every model has a preference for are kept. ``prices``: blended $/1M tokens per
    model; models it does not name cost :data:`DEFAULT_ALPACA_PRICE`. Unknown models: ValueError.
    """
    models = list(dict.fromkeys(models))
    prefs = _alpaca_prefs(data_dir)
    known = sorted(prefs["model"].unique())
    unknown = [m for m in models if m not in known]
    if not models or unknown:
        what = f"unknown AlpacaEval models {unknown}" if unknown else "no models given"
        raise ValueError(f"{what}; available: {', '.join(known)}")
    prefs = prefs[prefs["model"].isin(models)]
    per_id = prefs.groupby("id")["model"].nunique()
    common = per_id.index[per_id == len(models)]
    log.info(
        "alpaca_eval: %d instructions answered by all %d models; dropped %d answered by only some",
        len(common),
        len(models),
        len(per_id) - len(common),
    )
    instructions = _jsonl(Path(data_dir) / "normalized" / "alpaca_eval.jsonl.gz")[["id", "instruction"]]
    rows = instructions[instructions["id"].isin(common)].merge(prefs, on="id")
    rows = rows.assign(
        query_id=rows["id"],
        query=rows["instruction"],
        domain="general",
        source="alpaca_eval",
        expert=rows["model"],
        quality=rows["preference"].astype(float) - 1,
        answer="",
        output_chars=rows["model_output_chars"],
    )
    price = {m: (prices or {}).get(m, DEFAULT_ALPACA_PRICE) for m in models}
    return _labelled(rows, price, DEFAULT_OUTPUT_TOKENS)
