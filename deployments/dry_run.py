"""``expert-router route``: how a file of queries would be routed, before anything is deployed.

Each query goes the way a routed request goes in a router replica: the same request model
(``ChatRequest``: a line's own ``routing`` options, capabilities its tools or media need), the same
candidate experts (``routing_question``) and the same policy built from the config, batched as the replica
batches concurrent decisions. A line's ``model`` is not read: the question is how the router would
route it. No Ray, Serve or engine is started; nothing is sent to an expert.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from deployments.config import AppConfig
from deployments.dispatch import RoutingError, routing_question
from deployments.openai_api import ChatRequest
from router.config import ConfigError, field_path
from router.policy import RouteRequest, RoutingPolicy, build_policy
from router.query_files import read_records, record_messages, request_of

MAX_REPORTED = 20
"""Bad lines listed at most (their count is always given)."""


class QueryFileError(ValueError):
    """The query file has lines that cannot be routed; the message names each (up to MAX_REPORTED)."""


@dataclass(frozen=True)
class Query:
    line: int
    request: ChatRequest
    question: RouteRequest
    """What the policy is asked: the conversation, the candidates (allowed and capable), the cost weight."""


def _body(record: Any) -> dict[str, Any]:
    """The chat request body of one record: an object's request fields (``routing``, ``tools``…;
    an OpenAI Batch API line's ``body``'s) with its conversation as ``messages`` (see
    :mod:`router.query_files`)."""
    messages = record_messages(record)
    request = request_of(record)
    fields = request.items() if isinstance(request, dict) else ()
    return {**{key: value for key, value in fields if key in ChatRequest.model_fields}, "messages": messages}


def read_queries(path: str | Path, config: AppConfig, fmt: str = "auto") -> tuple[list[Query], int]:
    """Every query of the file (any format of :mod:`router.query_files`), with its candidate
    experts, and how many blank lines it has (not queries). A bad line is an error naming it: the
    whole file is checked first, and nothing is routed unless every line is good."""
    path = Path(path)
    try:
        records, blank = read_records(path, fmt)
    except ValueError as exc:
        raise QueryFileError(f"{path}: {exc}") from None
    abilities = {name: config.abilities(name) for name in config.expert_names}
    queries, problems = [], []
    for number, record in records:
        body: Any = None
        try:
            body = _body(record)
            request = ChatRequest.model_validate({**body, "model": "router"})
            if over := request.over_limits(config.ingress.security):  # the router's 400s
                raise ValueError("; ".join(f"{where}: {problem}" for where, problem in over))
            queries.append(Query(number, request, routing_question(request, config.expert_names, abilities)))
        except ValidationError as exc:
            said = [
                f"{field_path(e['loc'], body) or 'request'}: {str(e['msg']).removeprefix('Value error, ')}"
                for e in exc.errors()[:3]
            ]
            problems.append(f"{path}:{number}: {'; '.join(said)}")
        except (ValueError, RoutingError) as exc:
            problems.append(f"{path}:{number}: {exc}")
    if problems:
        shown = problems[:MAX_REPORTED]
        more = len(problems) - len(shown)
        raise QueryFileError("\n".join([*shown, *([f"... and {more} more bad lines"] if more else [])]))
    if not queries:
        raise QueryFileError(f"{path}: no queries")
    return queries, blank


def expected_cost(config: AppConfig, policy: RoutingPolicy, expert: str, request: ChatRequest) -> float:
    """The expected cost of one query at ``expert``: the policy's measured mean cost per query for
    it (trained artifacts: from phase 1) where it has one, else the expert's prices at about 4
    characters a token in and its ``max_tokens`` out (an upper bound)."""
    measured = policy.expected_costs().get(expert)
    if measured is not None and math.isfinite(measured):
        return float(measured)
    settings = config.expert(expert)
    tokens_in = math.ceil(sum(len(text) for text in request.texts()) / 4)
    tokens_out = request.token_limit or settings.sampling.max_tokens
    return settings.price.cost(tokens_in, tokens_out)


def route_file(config: AppConfig, queries: list[Query], batch_size: int = 64) -> Iterator[dict[str, Any]]:
    """One record per query: its line, the first choice, the ranking, the scores and the cost."""
    try:
        policy = build_policy(config.policy, config.experts)
    except Exception as exc:
        raise ConfigError(f"policy {config.policy.name}: {exc}") from None
    for start in range(0, len(queries), batch_size):
        batch = queries[start : start + batch_size]
        for query, decision in zip(batch, policy.route_batch([q.question for q in batch])):
            yield {
                "line": query.line,
                "expert": decision.expert,
                "ranking": list(decision.ranking),
                "scores": {name: _finite(score) for name, score in decision.scores.items()},
                "cost_usd": expected_cost(config, policy, decision.expert, query.request),
                **({"note": decision.note} if decision.note else {}),
            }


def summarize(records: list[dict[str, Any]], config: AppConfig) -> dict[str, Any]:
    """The share of queries per expert (every configured expert, 0 included) and the expected cost."""
    counts = Counter(record["expert"] for record in records)
    total = len(records)
    return {
        "queries": total,
        "share": {name: counts[name] / total for name in config.expert_names},
        "count": {name: counts[name] for name in config.expert_names},
        "expected_cost_usd": sum(record["cost_usd"] for record in records),
        "policy": config.policy.model_dump(),
    }


def _finite(score: float) -> float | None:
    """JSON has no infinities: an expert the policy never routes to scores null."""
    return float(score) if math.isfinite(score) else None
