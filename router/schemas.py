"""The router's own parts of the HTTP API: routing options and explanation, the model list, errors.

The OpenAI requests themselves are ray.serve.llm's (vLLM's) models, see ``deployments/openai_api.py``;
replies are the expert's whole response plus ``expert``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class RoutingOptions(BaseModel):
    """Per-request routing controls (OpenAI clients send them with ``extra_body={"routing": ...}``)."""

    model_config = ConfigDict(extra="forbid")
    cost_weight: float | None = Field(None, ge=0, description="Trade quality for price (0: quality only).")
    experts: list[str] | None = Field(None, min_length=1, description="Route only among these experts.")
    explain: bool = Field(False, description="Add a 'routing' field: expert, scores, routing ms, cost.")
    load_weight: float | None = Field(
        None, ge=0, description="Override ingress.load.load_weight (0: ignore load)."
    )
    max_ttft_ms: float | None = Field(
        None, gt=0, description="Pass over experts whose expected time to first token exceeds this."
    )
    strict_latency: bool = Field(False, description="With max_ttft_ms: 503 when no candidate meets it.")


class RoutingInfo(BaseModel):
    """Why this expert answered (``routing.explain``)."""

    expert: str
    routed: bool
    scores: dict[str, float | None]
    routing_ms: float
    fallbacks: list[str]
    cost_usd: float | None = None
    shed: bool = Field(False, description="Overload: the policy did not decide in time (see shed_tier)")
    shed_tier: Literal["fast", "prior"] | None = Field(
        None,
        description="Who decided a shed request: 'fast', the per-query tier learned from the policy's "
        "decisions, or 'prior', the recent average of its scores (before the fast tier is ready)",
    )
    note: str | None = Field(
        None, description="Why the policy ranked as it did beyond its scores (e.g. the default expert)"
    )
    load: dict[str, Any] | None = Field(
        None,
        description="Load-aware routing: the policy's own choice, whether load changed it, expected "
        "waits (ms), experts passed over for max_ttft_ms or spilled at their max_in_flight",
    )


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "expert-router"
    description: str = ""
    price: dict[str, float] | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """OpenAI-style error JSON."""

    error: ErrorInfo
