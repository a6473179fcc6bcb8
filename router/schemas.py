"""HTTP request/response models (OpenAI chat-completions shape plus the ``expert`` field)."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from router.config import ROUTER_MODEL_NAME

Role = Literal["system", "user", "assistant", "developer"]


class TextPart(BaseModel):
    """One part of an OpenAI multi-part content list (only text is supported)."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


def _encodable(text: str) -> str:
    """Text an engine can tokenize: valid Unicode (JSON may smuggle in lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"text is not valid Unicode ({exc.reason} at position {exc.start})") from None
    return text


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Role
    content: str | list[TextPart]

    @field_validator("content")
    @classmethod
    def _valid_unicode(cls, content: str | list[TextPart]) -> str | list[TextPart]:
        for text in [content] if isinstance(content, str) else [p.text for p in content]:
            _encodable(text)
        return content

    @property
    def text(self) -> str:
        """The content as plain text."""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class RoutingOptions(BaseModel):
    """Per-request routing controls (OpenAI clients send them with ``extra_body={"routing": ...}``)."""

    model_config = ConfigDict(extra="forbid")
    cost_weight: float | None = Field(None, ge=0, description="Trade quality for price (0: quality only).")
    experts: list[str] | None = Field(None, min_length=1, description="Route only among these experts.")
    explain: bool = Field(False, description="Add a 'routing' field: expert, scores, routing ms, cost.")


class ChatRequest(BaseModel):
    """The body of ``/predict`` and ``/v1/chat/completions``. Unknown OpenAI fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    messages: list[ChatMessage] = Field(min_length=1)
    model: str = ROUTER_MODEL_NAME
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=1, description="Only one choice per request is supported.")
    stream: bool = False
    routing: RoutingOptions | None = None

    @field_validator("messages")
    @classmethod
    def _has_user_turn(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if not any(m.role == "user" and m.text.strip() for m in messages):
            raise ValueError("messages must contain at least one non-empty user message")
        return messages

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def sampling_overrides(self) -> dict[str, Any]:
        """The generation settings the client set explicitly."""
        out: dict[str, Any] = {}
        if self.token_limit is not None:
            out["max_tokens"] = self.token_limit
        for key in ("temperature", "top_p", "seed"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.stop is not None:
            out["stop"] = [self.stop] if isinstance(self.stop, str) else self.stop
        return out


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str | None = "stop"


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int


class RoutingInfo(BaseModel):
    """Why this expert answered (``routing.explain``)."""

    expert: str
    routed: bool
    scores: dict[str, float | None]
    routing_ms: float
    fallbacks: list[str]
    cost_usd: float | None = None
    shed: bool = Field(
        False, description="Overload: the recent average of the policy's scores decided, not the model"
    )


class ChatResponse(BaseModel):
    """The seed's ``/predict`` reply; ``/v1/chat/completions`` adds ``model``."""

    id: str = Field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage
    expert: str
    routing: RoutingInfo | None = None


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
