"""Phase 1 on Ray Data: run every expert over instructions with reference answers -> labelled table.

The experts are the serving config's own deployments (ray.serve.llm LLMServer on vLLM): the job
either uses an application already running on the cluster (``app_name``) or deploys the config's
app for the duration of the job. A Ray Data pipeline streams (query, expert) pairs through

1. :class:`ExpertCalls` (async actor): per pair, the chat-templated prompt (the engine's own
   tokenizer), the answer (the expert's sampling settings plus a fixed seed), and the NLL of the
   reference (``prompt_logprobs`` over the reference tokens appended to the prompt, one
   ``max_tokens=1`` completion); all pairs of a batch are in flight at once, so vLLM batches them;
2. :class:`BertSim`: cosine similarity of answer and reference sentence embeddings (the
   BERT-Router's encoder by default), in batches.

Finished batches are appended as Parquet parts next to the output (``OUT.parts/``): an interrupted
run loses no finished row, a rerun does only the missing pairs, and the table is written from the
parts at the end. The same holds when the config's experts change: each row carries its expert's
fingerprint (:func:`expert_fingerprint`), so a rerun generates only the pairs of new experts and of
experts whose answers would differ (model, prompt, engine or sampling changed), keeps the rest, and
leaves removed experts out of the table; costs always come from the current prices. Rows that
cannot be scored (empty reference, prompt too long, expert error) are kept with the reason in
``error``.

Why calling the deployments rather than a separate batch engine: the job uses exactly the serving
definitions (models, prompts, sampling, prices), shares the replicas when the app already runs, and
scales with Serve's autoscaling on a GPU cluster; vLLM's continuous batching gets the concurrency
from many requests in flight, which is what the async actors provide.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deployments.config import AppConfig, ExpertConfig
from router.encoder import DEFAULT_ENCODER
from training.instructions import read_instructions
from training.table import conform, write_table

PHASE1_APP = "expert-router-phase1"


def load_instructions(
    path: str | Path,
    limit_per_domain: int | None = None,
    limit: int | None = None,
    seed: int = 0,
    skip_bad: bool = False,
) -> pd.DataFrame:
    """Instructions with references (any format of :mod:`training.instructions`) as columns
    query_id, query, reference, domain, source, split.

    Sampling is a seeded shuffle then the first ``limit_per_domain`` per domain (and ``limit`` in
    all), so a smaller limit picks a subset of a larger one.
    """
    df = read_instructions(path, skip_bad).sample(frac=1.0, random_state=seed)
    if limit_per_domain is not None:
        df = df.groupby("domain", sort=False).head(limit_per_domain)
    if limit is not None:
        df = df.head(limit)
    return df.reset_index(drop=True)


ANSWER_FIELDS = {"model", "base", "system_prompt", "engine_kwargs", "llm_config", "sampling", "env_vars"}
"""What an expert's answers depend on (its price does not: costs are recomputed from tokens)."""
UNSET_ANSWER_FIELDS = {"base": None, "engine_kwargs": {}, "llm_config": {}, "env_vars": {}}
"""What those fields are for a kind of expert that has none of them (fingerprints stay comparable)."""


def _answer_fields(expert: ExpertConfig) -> dict[str, Any]:
    return {**UNSET_ANSWER_FIELDS, **expert.model_dump(mode="json", include=ANSWER_FIELDS)}


def expert_fingerprint(expert: ExpertConfig, config: AppConfig) -> str:
    """A short hash of the expert's :data:`ANSWER_FIELDS` (a LoRA adapter's: with its base's, from
    ``config``): rows made under another one are stale."""
    fields = _answer_fields(expert)
    if expert.engine not in (None, expert.name):  # it rides another expert's engine
        fields["engine"] = _answer_fields(config.serving(expert.name))
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


class PartStore:
    """Finished rows as Parquet parts in a folder: append-only, so a crash loses no finished part."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def read(self, fingerprints: dict[str, str] | None = None) -> pd.DataFrame:
        """Every stored row, or only those of these experts made under these fingerprints."""
        parts = sorted(self.folder.glob("part-*.parquet"))
        df = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True) if parts else pd.DataFrame()
        if fingerprints is None or not len(df):
            return df
        current = df["expert"].map(fingerprints)
        made_under = df["fingerprint"] if "fingerprint" in df else current  # parts from before fingerprints
        return df[current.notna() & (made_under == current)].reset_index(drop=True)

    def done(self, fingerprints: dict[str, str] | None = None) -> set[tuple[str, str]]:
        df = self.read(fingerprints)
        return set(zip(df["query_id"], df["expert"])) if len(df) else set()

    def append(self, rows: pd.DataFrame) -> None:
        name = f"part-{time.time_ns()}-{uuid.uuid4().hex[:6]}.parquet"
        tmp = self.folder / f".{name}.tmp"
        rows.to_parquet(tmp, index=False)
        tmp.rename(self.folder / name)  # atomic: a part is either whole or absent


def pending_pairs(queries: pd.DataFrame, experts: list[str], done: set[tuple[str, str]]) -> pd.DataFrame:
    """One row per (query, expert) not yet in ``done``."""
    pairs = queries.merge(pd.DataFrame({"expert": experts}), how="cross")
    keep = [(q, e) not in done for q, e in zip(pairs["query_id"], pairs["expert"])]
    return pairs[keep].reset_index(drop=True)


class ExpertError(Exception):
    """The expert could not produce what was asked (the reason goes into the row's ``error``)."""


async def _first(replies: Any) -> Any:
    """The one response of a non-streamed LLMServer call; ExpertError for an engine error."""
    async for reply in replies:
        head = reply[0] if isinstance(reply, list) and reply else reply
        error = getattr(head, "error", None)
        if error is not None:
            raise ExpertError(error.message)
        return head
    raise ExpertError("no response")


class ExpertCalls:
    """Ray Data actor: answer, token counts, timing and reference NLL for each (query, expert) row."""

    def __init__(
        self,
        config: dict[str, Any],
        app_name: str,
        seed: int = 0,
        max_tokens: int | None = None,
        nll_only: bool = False,
    ):
        from ray import serve

        from deployments.experts import deployment

        self.config = AppConfig.parse(config)
        self.seed, self.max_tokens, self.nll_only = seed, max_tokens, nll_only
        self.handles = {
            e.name: serve.get_deployment_handle(deployment(e, self.config), app_name=app_name).options(
                stream=True
            )
            for e in self.config.experts
        }
        self.tokenizers: dict[str, Any] = {}
        for name in self.handles:  # load now: loading inside a request would stall the event loop
            self.tokenizer(name)

    async def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        rows = await asyncio.gather(*(self.score(row) for row in batch.to_dict("records")))
        return pd.DataFrame(rows)

    async def score(self, row: dict[str, Any]) -> dict[str, Any]:
        out = {**row, "answer": "", "nll": np.nan, "inference_s": np.nan, "input_tokens": 0}
        out.update(output_tokens=0, cost=0.0, error="")
        if not str(row["reference"]).strip():
            return {**out, "error": "empty reference"}
        if not str(row["query"]).strip():
            return {**out, "error": "empty query"}
        try:
            if self.nll_only:
                answer, nll = {}, await self.reference_nll(row)
            else:
                answer, nll = await asyncio.gather(self.answer(row), self.reference_nll(row))
        except ExpertError as exc:
            return {**out, "error": f"expert {row['expert']}: {exc}"[:500]}
        except Exception as exc:  # replica died, timeout, serialization: recorded, not fatal
            return {**out, "error": f"expert {row['expert']}: {type(exc).__name__}: {exc}"[:500]}
        return {**out, **answer, "nll": nll}

    def _request(self, row: dict[str, Any]) -> Any:
        from deployments.openai_api import ChatRequest

        return ChatRequest.model_validate({"messages": [{"role": "user", "content": row["query"]}]})

    async def answer(self, row: dict[str, Any]) -> dict[str, Any]:
        from deployments.dispatch import expert_request

        expert = self.config.expert(row["expert"])
        extra = {"seed": self.seed, **({"max_tokens": self.max_tokens} if self.max_tokens else {})}
        request = expert_request(expert, self._request(row), **extra)
        started = time.perf_counter()
        reply = await _first(self.handles[expert.name].chat.remote(request))
        seconds = time.perf_counter() - started
        usage = reply.usage
        return {
            "answer": reply.choices[0].message.content or "",
            "inference_s": seconds,
            "input_tokens": usage.prompt_tokens,
            "output_tokens": usage.completion_tokens,
            "cost": expert.price.cost(usage.prompt_tokens, usage.completion_tokens),
        }

    def tokenizer(self, name: str) -> Any:
        """The expert's own tokenizer (the files its engine loads; a LoRA adapter's base's), for exact
        reference positions."""
        if name not in self.tokenizers:
            from transformers import AutoTokenizer

            from deployments.experts.model_store import resolve_model

            self.tokenizers[name] = AutoTokenizer.from_pretrained(
                resolve_model(self.config.serving(name).model)
            )
        return self.tokenizers[name]

    def nll_prompt(self, row: dict[str, Any]) -> tuple[list[int], list[int]]:
        """Token ids of the expert's chat-templated prompt and of the reference answer."""
        from deployments.dispatch import with_profile

        tokenizer = self.tokenizer(row["expert"])
        messages = with_profile(self.config.expert(row["expert"]).system_prompt, self._request(row).messages)
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        prompt = prompt["input_ids"] if isinstance(prompt, dict) or hasattr(prompt, "keys") else prompt
        return list(prompt), tokenizer(row["reference"], add_special_tokens=False)["input_ids"]

    async def reference_nll(self, row: dict[str, Any]) -> float:
        """Mean NLL per reference token after the expert's chat-templated prompt: one ``max_tokens=1``
        completion of prompt + reference with ``prompt_logprobs`` (NaN if it does not fit)."""
        from ray.serve.llm.openai_api_models import CompletionRequest

        prompt, reference = self.nll_prompt(row)
        limit = self.config.serving(row["expert"]).all_engine_kwargs.get("max_model_len")
        if not reference or (limit and len(prompt) + len(reference) >= limit):
            return float("nan")
        request = CompletionRequest(
            model=row["expert"], prompt=prompt + reference, max_tokens=1, prompt_logprobs=0
        )
        reply = await _first(self.handles[row["expert"]].completions.remote(request))
        steps = reply.choices[0].prompt_logprobs[-len(reference) :]
        return float(-np.mean([step[token].logprob for step, token in zip(steps, reference)]))


class BertSim:
    """Ray Data actor: cosine similarity of each answer to its reference (sentence embeddings, the
    encoder on ONNX Runtime fp32 with one thread: the actor runs beside the vLLM engines)."""

    def __init__(self, skip: bool = False, encoder: str = DEFAULT_ENCODER):
        from router.encoder import set_inference_threads

        set_inference_threads(1)
        self.skip, self.encoder = skip, encoder

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        from router.encoder import embed

        batch = batch.copy()
        batch["bertsim"] = np.nan
        ok = (batch["error"] == "").to_numpy()
        if ok.any() and not self.skip:
            answers = embed(batch.loc[ok, "answer"].tolist(), self.encoder)
            references = embed(batch.loc[ok, "reference"].tolist(), self.encoder)
            batch.loc[ok, "bertsim"] = np.clip((answers * references).sum(axis=1), -1.0, 1.0)
        batch["quality"] = batch["bertsim"]
        return batch


@contextmanager
def experts_serving(config: AppConfig, app_name: str | None) -> Iterator[str]:
    """The name of a Serve app whose ``expert:<name>`` deployments answer: ``app_name`` if given
    (already running), else the config's app deployed for the block (no HTTP route) and removed."""
    from ray import serve

    if app_name:
        yield app_name
        return
    from deployments.app import build_app

    serve.start(http_options={"host": "127.0.0.1", "port": _free_port()})  # no-op if Serve already runs
    args = config.model_dump(mode="json")
    args["policy"] = {"name": "random", "args": {"seed": 0}}  # phase 1 needs the experts, not a router
    serve.run(build_app(args), name=PHASE1_APP, route_prefix=None, blocking=False)
    try:
        yield PHASE1_APP
    finally:
        serve.delete(PHASE1_APP)


def generate(
    config: AppConfig,
    data: str | Path,
    out: str | Path,
    *,
    limit_per_domain: int | None = None,
    limit: int | None = None,
    seed: int = 0,
    max_tokens: int | None = None,
    batch_size: int = 16,
    actors: int = 2,
    encoder: str = DEFAULT_ENCODER,
    app_name: str | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    nll_only: bool = False,
    skip_bad: bool = False,
) -> pd.DataFrame:
    """Write the labelled table for ``config``'s experts over ``data`` to ``out``; return it.

    Needs a connected Ray (``ray.init``). ``progress(done, total, pairs_per_s)`` is called after each
    finished batch (default: a line on stdout). ``nll_only``: score the reference NLL only (no
    answers, no BERTSim), the cheap label.
    """
    import ray

    engineless = [e.name for e in config.experts if e.engine is None]
    if engineless:  # the reference NLL needs the engine's prompt logprobs and the model's tokenizer
        raise ValueError(
            "phase 1 runs only experts that a vLLM engine of the app serves; these have none: "
            + ", ".join(engineless)
        )
    out = Path(out)
    queries = load_instructions(data, limit_per_domain, limit, seed, skip_bad)
    parts = PartStore(out.with_name(out.name + ".parts"))
    fingerprints = {e.name: expert_fingerprint(e, config) for e in config.experts}
    todo = pending_pairs(queries, config.expert_names, parts.done(fingerprints))
    total, finished = len(queries) * len(config.experts), len(queries) * len(config.experts) - len(todo)
    if finished:
        print(f"phase 1: {finished} of {total} (query, expert) pairs already stored; generating {len(todo)}")
    report = progress or _print_progress
    if len(todo):
        with experts_serving(config, app_name) as app:
            pipeline = (
                # One block per batch, so batches flow through the actors (and into parts) one by one.
                ray.data.from_pandas([todo[s : s + batch_size] for s in range(0, len(todo), batch_size)])
                .map_batches(
                    ExpertCalls,
                    fn_constructor_kwargs={
                        "config": config.model_dump(mode="json"),
                        "app_name": app,
                        "seed": seed,
                        "max_tokens": max_tokens,
                        "nll_only": nll_only,
                    },
                    batch_size=batch_size,
                    batch_format="pandas",
                    compute=ray.data.ActorPoolStrategy(size=actors),
                    num_cpus=0.05,
                )
                .map_batches(
                    BertSim,
                    fn_constructor_kwargs={"skip": nll_only, "encoder": encoder},
                    batch_size=None,  # each answered batch as it comes: stored as soon as scored
                    batch_format="pandas",
                    compute=ray.data.ActorPoolStrategy(size=1),
                    num_cpus=0.1,
                )
            )
            started = time.perf_counter()
            for batch in pipeline.iter_batches(batch_format="pandas", batch_size=None):
                parts.append(batch.assign(fingerprint=batch["expert"].map(fingerprints)))
                finished += len(batch)
                report(finished, total, (finished - (total - len(todo))) / (time.perf_counter() - started))
    rows = parts.read(fingerprints)
    rows = rows[rows["query_id"].isin(set(queries["query_id"]))].drop_duplicates(
        ["query_id", "expert"], keep="last"
    )
    table = conform(with_current_prices(rows, config))
    write_table(table, out)
    return table


def with_current_prices(rows: pd.DataFrame, config: AppConfig) -> pd.DataFrame:
    """``rows`` with each answered row's cost from its tokens and the expert's price in ``config``."""
    prices = {e.name: e.price for e in config.experts}
    answered = rows["error"].fillna("") == ""
    per_input = rows["expert"].map({n: p.input_per_1m for n, p in prices.items()})
    per_output = rows["expert"].map({n: p.output_per_1m for n, p in prices.items()})
    cost = (rows["input_tokens"] * per_input + rows["output_tokens"] * per_output) / 1e6
    return rows.assign(cost=cost.where(answered, rows["cost"]))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _print_progress(done: int, total: int, rate: float) -> None:
    print(f"[generate] {done}/{total} (query, expert) pairs, {rate:.2f} pairs/s", flush=True)


def summary(table: pd.DataFrame) -> dict[str, Any]:
    """Per expert: rows, errors, mean BERTSim/NLL, tokens and cost (for the CLI and notes)."""
    by = table.groupby("expert")
    return {
        "rows": len(table),
        "queries": int(table["query_id"].nunique()),
        "errors": {
            str(k): int(v) for k, v in table.loc[table["error"] != "", "error"].value_counts().items()
        },
        "experts": json.loads(
            by.agg(
                bertsim=("bertsim", "mean"),
                nll=("nll", "mean"),
                output_tokens=("output_tokens", "mean"),
                inference_s=("inference_s", "mean"),
                cost=("cost", "sum"),
            )
            .round(4)
            .to_json(orient="index")
        ),
    }
