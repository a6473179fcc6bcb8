"""Expert kind ``remote`` (or just ``endpoint:``): any OpenAI-compatible endpoint, called the way
the router calls a local expert's DeploymentHandle (``.options(stream=True).chat.remote(request)``,
``.completions``, ``.check_health.remote()``).

The request is the one a local expert gets (every field the client sent), with ``model`` = the
endpoint's model name. Non-streamed answers come back as the endpoint's JSON body (a dict, whole),
streamed ones as ``data: {...}`` SSE strings, and HTTP errors as an object with ``error.code`` /
``error.message``, like ray.serve.llm's ErrorResponse, so the router's fallback and error handling
apply unchanged (4xx: the request is wrong; 5xx, timeouts, refused connections:
fall back to the next expert).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import httpx
from pydantic import Field

from router.config import ExpertBase, Strict

if TYPE_CHECKING:
    from deployments.config import AppConfig


class RemoteEndpoint(Strict):
    """An OpenAI-compatible server that answers for an expert instead of a local vLLM deployment."""

    base_url: str = Field(pattern=r"^https?://", description="e.g. https://api.example.com/v1")
    api_key_env: str | None = Field(None, description="Environment variable holding the API key.")
    timeout_s: float = Field(120.0, gt=0, description="Seconds one call to the endpoint may take.")


class RemoteExpert(ExpertBase):
    """An OpenAI-compatible endpoint the router calls itself (``kind: remote``, or just ``endpoint``)."""

    implied_by: ClassVar[str | None] = "endpoint"
    kind: Literal["remote"] = Field("remote", description="How it is served (implied by endpoint).")
    endpoint: RemoteEndpoint = Field(description="Where it answers; 'model' is the model name there.")

    @property
    def abilities(self) -> frozenset[str]:
        return (
            frozenset(self.capabilities)
            if self.capabilities is not None
            else frozenset({"tools", "json_schema"})
        )


def deployment(expert: RemoteExpert, config: AppConfig) -> None:
    return None


def check(expert: RemoteExpert, config: AppConfig) -> None:
    return None


def application(expert: RemoteExpert, config: AppConfig) -> None:
    return None


def client(expert: RemoteExpert) -> RemoteClient:
    return RemoteClient(expert)


class _Method:
    """``.remote(...)`` like a handle method."""

    def __init__(self, fn: Callable[..., Any]):
        self.remote = fn


REQUEST_ERRORS = {400, 413, 422}
"""Statuses that blame the request; any other error (401, 404, 429, 5xx…) means the expert is
unavailable, so the router falls back."""


def _error(status: int, text: str) -> SimpleNamespace:
    code = status if status in REQUEST_ERRORS else 503
    return SimpleNamespace(
        error=SimpleNamespace(code=code, message=f"remote endpoint {status}: {text[:500]}")
    )


class _Replies:
    """An async iterator over a remote answer with ``cancel()``, like a DeploymentResponseGenerator:
    cancelling closes the HTTP request, so the remote server stops generating."""

    def __init__(self, replies: AsyncIterator[Any]):
        self._replies = replies

    def __aiter__(self) -> _Replies:
        return self

    async def __anext__(self) -> Any:
        return await self._replies.__anext__()

    def cancel(self) -> None:
        async def close() -> None:
            try:
                await self._replies.aclose()
            except RuntimeError:  # still running: its cancelled task closes it
                pass

        asyncio.ensure_future(close())


class RemoteClient:
    """Handle-like client of one remote expert."""

    def __init__(self, expert: RemoteExpert):
        endpoint = expert.endpoint
        key = os.environ.get(endpoint.api_key_env, "") if endpoint.api_key_env else ""
        self.model = expert.model
        self.client = httpx.AsyncClient(
            base_url=endpoint.base_url.rstrip("/") + "/",
            headers={"Authorization": f"Bearer {key}"} if key else {},
            timeout=endpoint.timeout_s,
        )
        self.chat = _Method(lambda request: _Replies(self._call("chat/completions", request)))
        self.completions = _Method(lambda request: _Replies(self._call("completions", request)))
        self.check_health = _Method(lambda: asyncio.ensure_future(self._check_health()))

    def options(self, **_: Any) -> RemoteClient:
        return self

    async def _call(self, path: str, request: Any) -> AsyncIterator[Any]:
        body = {**request.model_dump(mode="json", exclude_unset=True, by_alias=True), "model": self.model}
        if not body.get("stream"):
            reply = await self.client.post(path, json=body)
            yield _error(reply.status_code, reply.text) if reply.is_error else reply.json()
            return
        async with self.client.stream("POST", path, json=body) as reply:
            if reply.is_error:
                yield _error(reply.status_code, (await reply.aread()).decode(errors="replace"))
                return
            async for line in reply.aiter_lines():
                if line.startswith("data: "):
                    yield line + "\n\n"

    async def _check_health(self) -> None:
        reply = await self.client.get("models")
        reply.raise_for_status()
