"""The router: rank the experts with the policy, call the best one, fall back down the ranking.

Plain Python over DeploymentHandles (``handle.options(stream=True).chat.remote(request)``), so the
logic is testable without a cluster; ``deployments/ingress.py`` puts HTTP routes on it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import JSONResponse

from router.config import ROUTER_MODEL_NAME, AppConfig, ExpertConfig
from router.policy import build_policy, to_messages
from router.schemas import (
    AssistantMessage,
    ChatRequest,
    ChatResponse,
    Choice,
    ErrorBody,
    ErrorInfo,
    ModelCard,
    ModelList,
    RoutingOptions,
    Usage,
)

logger = logging.getLogger("ray.serve")


class APIError(Exception):
    """An error the client sees as OpenAI-style JSON."""

    def __init__(
        self, status: int, message: str, type_: str, code: str | None = None, param: str | None = None
    ):
        super().__init__(message)
        self.status, self.info = status, ErrorInfo(message=message, type=type_, code=code, param=param)

    def response(self) -> JSONResponse:
        return JSONResponse(ErrorBody(error=self.info).model_dump(), status_code=self.status)


class ExpertFailed(Exception):
    """An expert could not answer (error, timeout, replica gone); the next one may."""


def expert_messages(expert: ExpertConfig, request: ChatRequest) -> list[dict[str, str]]:
    """The conversation as the expert gets it: its domain profile merged into the system turn."""
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text} for m in request.messages
    ]
    if expert.system_prompt:
        if messages[0]["role"] == "system":
            messages[0] = {"role": "system", "content": f"{expert.system_prompt}\n\n{messages[0]['content']}"}
        else:
            messages.insert(0, {"role": "system", "content": expert.system_prompt})
    return messages


def expert_sampling(expert: ExpertConfig, request: ChatRequest) -> dict[str, Any]:
    """The expert's defaults overridden by what the client set; stop strings are combined."""
    defaults = expert.sampling.model_dump()
    overrides = request.sampling_overrides()
    stop = list(dict.fromkeys(defaults.pop("stop") + overrides.pop("stop", [])))
    return {**defaults, **overrides, "stop": stop}


def expert_chat_request(
    expert: ExpertConfig, request: ChatRequest, stream: bool = False, **extra: Any
) -> Any:
    """The ray.serve.llm ChatCompletionRequest that expert ``expert`` gets for ``request``."""
    from ray.serve.llm.openai_api_models import ChatCompletionRequest

    if stream:
        extra.setdefault("stream_options", {"include_usage": True})
    return ChatCompletionRequest(
        model=expert.name,
        messages=expert_messages(expert, request),
        stream=stream,
        **{**expert_sampling(expert, request), **extra},
    )


class ExpertRouter:
    """Routes each chat request to one expert deployment and reports which one answered."""

    def __init__(self, config: dict[str, Any], experts: dict[str, Any]):
        self.config = AppConfig.parse(config)
        self.policy = build_policy(self.config.policy, self.config.expert_names)
        self._experts = experts
        self.handles = {name: handle.options(stream=True) for name, handle in experts.items()}
        self.models = ModelList(
            data=[
                ModelCard(id=ROUTER_MODEL_NAME, description=f"routes by policy '{self.config.policy.name}'")
            ]
            + [
                ModelCard(id=e.name, description=e.description, price=e.price.model_dump())
                for e in self.config.experts
            ]
        )

    async def expert_readiness(self, timeout_s: float = 5.0) -> dict[str, str]:
        """``ok`` per expert whose deployment passes its own health check within ``timeout_s``."""

        async def check(name: str) -> tuple[str, str]:
            response = self._experts[name].check_health.remote()
            try:
                await asyncio.wait_for(_awaited(response), timeout_s)
                return name, "ok"
            except asyncio.TimeoutError:
                response.cancel()
                return name, f"no replica answered within {timeout_s}s"
            except Exception as exc:
                return name, f"unhealthy: {type(exc).__name__}: {exc}"

        return dict(await asyncio.gather(*(check(name) for name in self._experts)))

    async def _open(self, name: str, request: ChatRequest, stream: bool) -> tuple[Any, AsyncIterator[Any]]:
        """Send the request to expert ``name``; its first reply and the rest of its reply stream.

        Raises ExpertFailed when the expert cannot answer (the next one may), APIError(400) when
        its engine refuses the request itself.
        """
        llm_request = expert_chat_request(self.config.expert(name), request, stream)
        timeout = self.config.ingress.expert_timeout_s
        try:
            replies = self.handles[name].chat.remote(llm_request)
            first = await asyncio.wait_for(replies.__anext__(), timeout)
        except asyncio.TimeoutError:
            raise ExpertFailed(f"{name}: no answer within {timeout}s") from None
        except Exception as exc:  # replica died, actor error, engine crash, empty stream
            raise ExpertFailed(f"{name}: {type(exc).__name__}: {exc}") from exc
        head = first[0] if isinstance(first, list) and first else first
        error = getattr(head, "error", None)
        if error is not None:
            code = int(getattr(error, "code", 500) or 500)
            if 400 <= code < 500:  # the request itself is wrong for this expert (e.g. too long)
                raise APIError(400, f"expert '{name}': {error.message}", "invalid_request_error")
            raise ExpertFailed(f"{name}: {error.message}")
        return first, replies

    def _candidates(self, request: ChatRequest) -> tuple[list[str], bool]:
        """Experts to try, best first, and whether they came from the policy (else: bypass)."""
        if request.model == ROUTER_MODEL_NAME:
            options = request.routing or RoutingOptions()
            unknown = sorted(set(options.experts or ()) - set(self.handles))
            if unknown:
                raise APIError(
                    400,
                    f"routing.experts: unknown experts {unknown}",
                    "invalid_request_error",
                    param="routing.experts",
                )
            decision = self.policy.route(to_messages(request.messages), options.experts, options.cost_weight)
            return list(decision.ranking[: self.config.ingress.max_attempts]), True
        if request.model not in self.handles:
            known = ", ".join([ROUTER_MODEL_NAME, *self.handles])
            raise APIError(
                404,
                f"The model '{request.model}' does not exist; known: {known}",
                "invalid_request_error",
                code="model_not_found",
                param="model",
            )
        return [request.model], False

    async def _route(self, request: ChatRequest, stream: bool) -> tuple[str, Any, AsyncIterator[Any], dict]:
        """Try the candidates best first; the expert that answered, its reply, and the headers."""
        started = time.perf_counter()
        candidates, routed = self._candidates(request)
        routing_ms = (time.perf_counter() - started) * 1e3
        failures = []
        for name in candidates:
            try:
                first, rest = await self._open(name, request, stream)
            except ExpertFailed as exc:
                logger.warning("expert failed, trying the next one: %s", exc)
                failures.append(str(exc))
                continue
            headers = {
                "x-expert": name,
                "x-routing-ms": f"{routing_ms:.3f}",
                "x-routed": str(routed).lower(),
                "x-fallbacks": str(len(failures)),
            }
            return name, first, rest, headers
        raise APIError(
            503,
            "no expert could answer: " + " | ".join(failures),
            "service_unavailable",
            code="experts_unavailable",
        )

    async def complete(self, request: ChatRequest) -> tuple[ChatResponse, dict[str, str]]:
        """Answer one chat request; also the response headers that explain the routing."""
        name, reply, _, headers = await self._route(request, stream=False)
        choice, usage = reply.choices[0], reply.usage
        response = ChatResponse(
            model=name,
            expert=name,
            choices=[
                Choice(
                    message=AssistantMessage(content=choice.message.content or ""),
                    finish_reason=choice.finish_reason,
                )
            ],
            usage=Usage(
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                total_tokens=usage.total_tokens,
            ),
        )
        return response, headers

    async def stream(self, request: ChatRequest) -> tuple[AsyncIterator[str], dict[str, str]]:
        """Answer as OpenAI server-sent events; every chunk names the expert. Fallback happens
        before the first chunk; a failure after it ends the stream with an error event."""
        name, first, rest, headers = await self._route(request, stream=True)
        return _sse_events(name, first, rest), headers


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _with_expert(batch: Any, name: str) -> str:
    """SSE text of one batch of engine chunks (``data: {...}``), each JSON chunk tagged with the expert."""
    events = batch if isinstance(batch, list) else [batch]
    out = []
    for event in events:
        if not isinstance(event, str):  # an ErrorResponse in mid-stream
            out.append(f"data: {json.dumps({'error': event.error.model_dump(), 'expert': name})}\n\n")
            continue
        for line in event.split("\n\n"):
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            chunk["expert"] = name
            out.append(f"data: {json.dumps(chunk)}\n\n")
    return "".join(out)


async def _sse_events(name: str, first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[str]:
    yield _with_expert(first, name)
    try:
        async for batch in rest:
            yield _with_expert(batch, name)
    except Exception as exc:  # the expert died mid-answer: say so in the stream
        logger.warning("expert %s failed mid-stream: %s", name, exc)
        error = ErrorInfo(message=f"expert '{name}' failed mid-stream: {exc}", type="service_unavailable")
        yield f"data: {json.dumps({'error': error.model_dump(), 'expert': name})}\n\n"
    yield "data: [DONE]\n\n"
