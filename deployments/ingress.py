"""The HTTP layer: the router's Serve deployment, which is also the FastAPI ingress (saves a
~2.5 ms handle hop), holding a :class:`~deployments.dispatch.Dispatcher` that does the routing.

Routes: ``POST /predict`` (the seed's shape), ``POST /v1/chat/completions`` and ``POST
/v1/completions`` (OpenAI, the whole request passed to the expert; ``model`` = ``"router"`` routes,
an expert's name bypasses routing), ``GET /v1/models``, ``GET /health``, ``GET /ready``,
``GET /status`` (experts, policy, live load per expert, GPUs via gpustat). Errors are OpenAI-style
JSON: :data:`ERRORS` maps each of the dispatcher's refusals to its status, type and code.
:class:`RequestGuard` applies ``ingress.security``: API keys, body size, CORS.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments import dispatch
from deployments.dispatch import Dispatcher, RoutingError
from deployments.openai_api import (
    ChatRequest,
    ErrorBody,
    ErrorInfo,
    ModelCard,
    ModelList,
    RouterFields,
    TextCompletionRequest,
)
from router.config import INGRESS_DEPLOYMENT, field_path

logger = logging.getLogger("ray.serve")


class APIError(Exception):
    """An error the client sees as OpenAI-style JSON."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.info = status, ErrorInfo(message=message, type=type_, code=code, param=param)
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = ErrorBody(error=self.info).model_dump()
        return JSONResponse(body, status_code=self.status, headers=self.headers)


ERRORS: dict[type[RoutingError], tuple[int, str, str | None]] = {
    dispatch.NoCapableExpert: (400, "invalid_request_error", "capability_unsupported"),
    dispatch.InvalidRequest: (400, "invalid_request_error", None),
    dispatch.UnknownModel: (404, "invalid_request_error", "model_not_found"),
    dispatch.ExpertsOverloaded: (429, "rate_limit_error", "experts_overloaded"),
    dispatch.LatencyObjectiveUnmet: (503, "service_unavailable", "latency_objective_unmet"),
    dispatch.ExpertsUnavailable: (503, "service_unavailable", "experts_unavailable"),
}
"""The status, type and code of each kind of refusal (the most specific class listed first)."""


def api_error(exc: RoutingError) -> APIError:
    """The HTTP error of one of the dispatcher's refusals."""
    status, type_, code = next(
        (v for kind, v in ERRORS.items() if isinstance(exc, kind)), (503, "service_unavailable", None)
    )
    retry = getattr(exc, "retry_after_s", None)
    headers = {"retry-after": str(retry)} if retry is not None else None
    return APIError(status, str(exc), type_, code=code, param=exc.param, headers=headers)


app = FastAPI(title="expert-router", version="0.1.0")
OPEN_PATHS = {"/health", "/ready"}
"""Probes answer without an API key."""


class RequestGuard:
    """ASGI middleware: Bearer API keys (constant-time compare; 401), body size (413), CORS (only
    when origins are configured). Reads its settings from ``app.state.security`` (set per replica)."""

    def __init__(self, app: Any):
        self.app = app
        self.cors: Any = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        security = getattr(scope["app"].state, "security", None) if "app" in scope else None
        if scope["type"] != "http" or security is None:
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        keys = scope["app"].state.api_keys
        if (
            scope["path"] not in OPEN_PATHS
            and scope["method"] != "OPTIONS"
            and not _authorized(headers, keys)
        ):
            return await _reject(send, 401, "Invalid or missing API key (Authorization: Bearer ...)", scope)
        limit = security.max_body_bytes
        declared = headers.get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > limit:
            return await _reject(send, 413, f"Request body over {limit} bytes", scope)
        received, rejected = 0, False

        async def counted() -> dict:  # bodies without (or lying about) a length: count as they come
            nonlocal received, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:  # answer 413 now; the app sees a disconnect and its reply is dropped
                rejected = True
                await _reject(send, 413, f"Request body over {limit} bytes", scope)
                return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict) -> None:
            if not rejected:
                await send(message)

        target = self.app
        if security.cors_origins:
            from starlette.middleware.cors import CORSMiddleware

            self.cors = self.cors or CORSMiddleware(self.app, allow_origins=security.cors_origins)
            target = self.cors
        await target(scope, counted, guarded_send)


def _authorized(headers: dict[bytes, bytes], keys: list[bytes]) -> bool:
    if not keys:
        return True
    scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    token = token.strip().encode()
    ok = [hmac.compare_digest(token, key) for key in keys]  # every key compared: no early exit
    return scheme.lower() == "bearer" and any(ok)


async def _reject(send: Any, status: int, message: str, scope: dict) -> None:
    type_ = {401: "authentication_error", 413: "invalid_request_error"}[status]
    _count_error(scope["app"], type_)
    response = APIError(status, message, type_).response()
    await response(scope, None, send)


def _count_error(asgi_app: Any, kind: str) -> None:
    metrics = getattr(asgi_app.state, "metrics", None)
    if metrics is not None:
        metrics.error(kind)


app.add_middleware(RequestGuard)

SEED_FIELDS = {"id", "object", "created", "choices", "usage", "expert"}
"""``/predict`` answers with exactly the seed's fields."""


@app.exception_handler(APIError)
async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    _count_error(request.app, exc.info.code or exc.info.type)
    return exc.response()


@app.exception_handler(RoutingError)
async def _routing_error(request: Request, exc: RoutingError) -> JSONResponse:
    return await _api_error(request, api_error(exc))


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    _count_error(request.app, "invalid_request_error")
    errors = exc.errors()
    if any(err.get("type") == "json_invalid" for err in errors):
        detail = next(
            err.get("ctx", {}).get("error", "") for err in errors if err.get("type") == "json_invalid"
        )
        return APIError(
            400, f"The request body is not valid JSON: {detail}", "invalid_request_error"
        ).response()
    wheres = [field_path(tuple(err.get("loc", ()))[1:], exc.body) for err in errors]  # loc[0]: "body"
    messages = [err["msg"].removeprefix("Value error, ") for err in errors]
    problems = [f"{where}: {msg}" if where else msg for where, msg in zip(wheres, messages)]
    if len(problems) > 3:
        problems = [*problems[:3], f"and {len(problems) - 3} more"]
    return APIError(
        400,
        "; ".join(problems) or "invalid request",
        "invalid_request_error",
        param=wheres[0] if wheres else None,
    ).response()


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    _count_error(request.app, type_)
    return APIError(exc.status_code, str(exc.detail), type_).response()


def gpu_status() -> dict[str, Any]:
    """``{"available": bool, "gpus": [...]}``; ``reason`` says why none when there are none."""
    try:
        import gpustat

        stats = gpustat.new_query()
    except Exception as exc:  # no NVML library / no driver / no device: a CPU machine
        return {"available": False, "gpus": [], "reason": f"{type(exc).__name__}: {exc}".strip()}
    gpus = [
        {
            "index": g.index,
            "name": g.name,
            "utilization_pct": g.utilization,
            "memory_used_mb": g.memory_used,
            "memory_total_mb": g.memory_total,
            "temperature_c": g.temperature,
        }
        for g in stats.gpus
    ]
    return {"available": bool(gpus), "gpus": gpus}


@serve.deployment(name=INGRESS_DEPLOYMENT)
@serve.ingress(app)
class RouterIngress:
    """HTTP routes over one :class:`Dispatcher`; one replica holds every expert's handle."""

    def __init__(self, config: dict[str, Any], experts: dict[str, Any]):
        self.dispatcher = Dispatcher(config, experts)
        security = self.dispatcher.config.ingress.security
        keys = os.environ.get(security.api_keys_env, "") if security.api_keys_env else ""
        if security.api_keys_env and not keys.strip():
            raise ValueError(f"ingress.security.api_keys_env: ${security.api_keys_env} holds no keys")
        app.state.security, app.state.metrics = security, self.dispatcher.metrics
        app.state.api_keys = [k.strip().encode() for k in keys.split(",") if k.strip()]
        self._monitor: asyncio.Task | None = None

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve's in-place ``user_config`` update: a new policy (``Dispatcher.reconfigure``)."""
        await self.dispatcher.reconfigure(user_config)

    async def complete(self, request: RouterFields) -> tuple[dict[str, Any], dict[str, str]]:
        """A whole answer for a caller holding this deployment's handle (no HTTP; bench/serve_overhead.py)."""
        return await self.dispatcher.complete(request)

    async def _watch_experts(self) -> None:
        """Background loop: the running replicas of this deployment and of the experts', from
        Serve, handed to the dispatcher (``Dispatcher.observe_replicas``); never on the request path."""
        every = self.dispatcher.config.ingress.load.replicas_refresh_s
        context = serve.get_replica_context()
        app_name, own_name = context.app_name, context.deployment
        while True:
            try:
                status = await asyncio.to_thread(serve.status)
                deployments = status.applications[app_name].deployments
                states = {name: getattr(d, "replica_states", None) for name, d in deployments.items()}
                running = {name: int(s.get("RUNNING", 0)) for name, s in states.items() if s is not None}
                self.dispatcher.observe_replicas(running.pop(own_name, 1), running)
            except Exception as exc:  # the controller may be restarting: keep the last view
                logger.warning("reading expert replica counts failed: %s", exc)
            self.dispatcher.metrics.load(self.dispatcher.load.snapshot())
            await asyncio.sleep(every)

    @app.post("/predict")
    async def predict(self, request: ChatRequest) -> Response:
        """The seed's endpoint: routed chat completion with the answering expert's name."""
        return await self._answer(request, fields=SEED_FIELDS)

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: ChatRequest) -> Response:
        """OpenAI chat completions; ``model`` = "router" (default) routes, an expert name bypasses."""
        return await self._answer(request)

    @app.post("/v1/completions")
    async def completions(self, request: TextCompletionRequest) -> Response:
        """OpenAI (legacy) text completions, routed on the prompt; the expert's profile is not added
        (the client owns the whole prompt), its sampling defaults are."""
        return await self._answer(request)

    @app.post("/v1/responses", status_code=404)
    async def responses(self) -> JSONResponse:
        """Not served: the experts' server (ray.serve.llm 2.60's LLMServer) has no Responses API."""
        raise APIError(
            404,
            "The Responses API is not served: the experts run ray.serve.llm's LLMServer, which serves "
            "chat completions, completions, embeddings and scoring but no /v1/responses; use "
            "/v1/chat/completions (tools, structured outputs and streaming included).",
            "not_found_error",
            code="unsupported_endpoint",
        )

    async def _answer(self, request: RouterFields, fields: set[str] | None = None) -> Response:
        """JSON reply (only ``fields`` if given), or server-sent events when ``stream`` is set."""
        if self._monitor is None or self._monitor.done():
            self._monitor = asyncio.get_running_loop().create_task(self._watch_experts())
        if request.stream:
            events, headers = await self.dispatcher.stream(request)
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        body, headers = await self.dispatcher.complete(request)
        if fields is not None:
            body = {key: value for key, value in body.items() if key in fields}
        return JSONResponse(body, headers=headers)

    @app.get("/v1/models")
    async def list_models(self) -> ModelList:
        return self.dispatcher.models()

    @app.get("/v1/models/{name:path}")
    async def retrieve_model(self, name: str) -> ModelCard:
        """One model's card (the OpenAI SDK's ``models.retrieve``); 404 ``model_not_found`` else."""
        return self.dispatcher.model(name)

    @app.get("/health")
    async def health(self) -> dict[str, str]:
        """Liveness of the router itself (cheap; does not ask the experts)."""
        return {"status": "ok"}

    @app.get("/ready")
    async def ready(self) -> JSONResponse:
        """Readiness: 200 once every expert deployment passes its health check, else 503."""
        experts = await self.dispatcher.expert_readiness()
        ready = all(state == "ok" for state in experts.values())
        body = {"status": "ready" if ready else "not_ready", "experts": experts}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/status")
    async def status(self) -> dict[str, Any]:
        """Experts with prices, the routing policy and how its decisions run (worker thread, batches),
        and the GPUs of this node (gpustat)."""
        return {**self.dispatcher.status(), "gpus": gpu_status()}
