"""The router deployment, which is also the FastAPI ingress (saves a ~2.5 ms handle hop).

Routes: ``POST /predict`` (the seed's shape), ``POST /v1/chat/completions`` (OpenAI; ``model`` =
``"router"`` routes, an expert's name bypasses routing), ``GET /v1/models``, ``GET /health``,
``GET /status`` (experts, policy, GPUs via gpustat). Errors are OpenAI-style JSON.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.gpu_status import gpu_status
from deployments.router_core import APIError, ExpertRouter
from router.schemas import ChatRequest, ModelList

app = FastAPI(title="expert-router", version="0.1.0")

SEED_FIELDS = {"id", "object", "created", "choices", "usage", "expert"}
"""``/predict`` answers with exactly the seed's fields."""


@app.exception_handler(APIError)
async def _api_error(_: Request, exc: APIError) -> JSONResponse:
    return exc.response()


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(err.get("type") == "json_invalid" for err in errors):
        detail = next(
            err.get("ctx", {}).get("error", "") for err in errors if err.get("type") == "json_invalid"
        )
        return APIError(
            400, f"The request body is not valid JSON: {detail}", "invalid_request_error"
        ).response()
    wheres = [".".join(str(p) for p in err.get("loc", ()) if p != "body") for err in errors]
    problems = [f"{where}: {err['msg']}" if where else err["msg"] for where, err in zip(wheres, errors)]
    return APIError(
        400,
        "; ".join(problems) or "invalid request",
        "invalid_request_error",
        param=wheres[0] if wheres else None,
    ).response()


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return APIError(exc.status_code, str(exc.detail), type_).response()


@serve.deployment(name="router")
@serve.ingress(app)
class RouterIngress(ExpertRouter):
    """HTTP routes over :class:`ExpertRouter`; one replica holds every expert's handle."""

    @app.post("/predict")
    async def predict(self, request: ChatRequest) -> Response:
        """The seed's endpoint: routed chat completion with the answering expert's name."""
        return await self._answer(request, fields=SEED_FIELDS)

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: ChatRequest) -> Response:
        """OpenAI chat completions; ``model`` = "router" (default) routes, an expert name bypasses."""
        return await self._answer(request)

    async def _answer(self, request: ChatRequest, fields: set[str] | None = None) -> Response:
        """JSON reply (only ``fields`` if given), or server-sent events when ``stream`` is set."""
        if request.stream:
            events, headers = await self.stream(request)
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        response, headers = await self.complete(request)
        return JSONResponse(response.model_dump(include=fields), headers=headers)

    @app.get("/v1/models")
    async def list_models(self) -> ModelList:
        return self.models

    @app.get("/health")
    async def health(self) -> dict[str, str]:
        """Liveness of the router itself (cheap; does not ask the experts)."""
        return {"status": "ok"}

    @app.get("/ready")
    async def ready(self) -> JSONResponse:
        """Readiness: 200 once every expert deployment passes its health check, else 503."""
        experts = await self.expert_readiness()
        ready = all(state == "ok" for state in experts.values())
        body = {"status": "ready" if ready else "not_ready", "experts": experts}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/status")
    async def status(self) -> dict[str, Any]:
        """Experts with prices, the routing policy, and the GPUs of this node (gpustat)."""
        return {
            "policy": self.config.policy.model_dump(),
            "experts": [
                {
                    "name": e.name,
                    "model": e.model,
                    "accelerator": e.accelerator,
                    "price": e.price.model_dump(),
                }
                for e in self.config.experts
            ],
            "gpus": gpu_status(),
        }
