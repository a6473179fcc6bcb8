"""The router: rank the experts with the policy, balance by their live load, call the best one,
fall back down the ranking.

Plain Python over DeploymentHandles (``handle.options(stream=True).chat.remote(request)``), so the
logic is testable without a cluster; ``deployments/ingress.py`` puts HTTP routes on it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
from fastapi.responses import JSONResponse

from deployments.experts import clients
from deployments.metrics import RouterMetrics
from deployments.openai_api import ChatRequest, RouterFields
from router.batching import MicroBatcher
from router.config import ROUTER_MODEL_NAME, AppConfig, ExpertConfig, PolicyConfig, RouterUserConfig
from router.encoder import set_inference_threads
from router.fast_tier import DistilledTier
from router.load import Attempt, LoadTracker, load_aware_ranking
from router.policy import Message, RouteRequest, RoutingDecision, RoutingPolicy, build_policy, query_text
from router.schemas import ErrorBody, ErrorInfo, ModelCard, ModelList, RoutingInfo, RoutingOptions
from router.skills import warm_queries

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


class ExpertFailed(Exception):
    """An expert could not answer (error, timeout, replica gone); the next one may."""


def with_profile(profile: str | None, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation with an expert's domain profile merged into its system (or developer) turn."""
    if not profile:
        return messages
    first, rest = messages[0], messages[1:]
    if first["role"] not in ("system", "developer"):
        return [{"role": "system", "content": profile}, first, *rest]
    content = first.get("content")
    if isinstance(content, list):
        merged: Any = [{"type": "text", "text": f"{profile}\n\n"}, *content]
    else:
        merged = f"{profile}\n\n{content}" if content else profile
    return [{**first, "content": merged}, *rest]


def expert_request(expert: ExpertConfig, request: RouterFields, **changes: Any) -> Any:
    """The ray.serve.llm request expert ``expert`` gets for ``request``: the client's whole request
    with the expert's model id, profile and sampling defaults (see ``RouterFields.for_expert``).
    Streams always report usage (for metrics and cost); the router drops that chunk again when
    the client did not ask for it."""
    if isinstance(request, ChatRequest):
        changes.setdefault("messages", with_profile(expert.system_prompt, list(request.messages)))
    if request.stream:
        changes.setdefault("stream_options", {"include_usage": True})
    return request.for_expert(expert.name, expert.sampling, **changes)


Lesson = tuple[list[str], list[RoutingDecision]]
"""Queries and the policy's decisions on them, for the fast tier to learn from."""


def learning(
    policy: RoutingPolicy, fast: DistilledTier, experts: Sequence[str]
) -> Callable[[Sequence[RouteRequest]], list[RoutingDecision]]:
    """``policy.route_batch`` that also hands each batch it decides to ``fast`` to learn from, in a
    thread of its own after the decisions return (a batch that comes while the tier is still
    learning is skipped: bounded work). Only unrestricted questions teach it (every expert a
    candidate, no per-request cost weight): shed decisions are made for any request."""
    learner = ThreadPoolExecutor(1, thread_name_prefix="fast-tier")
    busy = threading.Lock()
    everyone = set(experts)

    def learn(texts: list[str], decisions: list[RoutingDecision]) -> None:
        try:
            fast.learn(texts, decisions)
        except Exception as exc:
            logger.warning("the fast tier could not learn from a batch: %s", exc)
        finally:
            busy.release()

    def decide(questions: Sequence[RouteRequest]) -> list[RoutingDecision]:
        decisions = policy.route_batch(questions)
        taught = [
            (query_text(q.messages), d)
            for q, d in zip(questions, decisions)
            if q.cost_weight is None and (q.candidates is None or set(q.candidates) == everyone)
        ]
        if taught and busy.acquire(blocking=False):
            texts, chosen = zip(*taught)
            learner.submit(learn, list(texts), list(chosen))
        return decisions

    return decide


def in_order_of(order: dict[str, float], scale: dict[str, float]) -> dict[str, float]:
    """``scale``'s finite scores handed out in ``order``'s ranking (its best gets the highest):
    the fast tier ranks, the policy's recent scores keep the scale load-aware ranking trades
    against expected waits; an expert at -inf (never routed to) stays there."""
    finite = [name for name in scale if math.isfinite(scale[name])]
    ranked = sorted(finite, key=lambda name: -order[name])
    return {**scale, **dict(zip(ranked, sorted((scale[n] for n in finite), reverse=True)))}


class NoCapableExpert(ValueError):
    """No candidate expert has every capability the request needs (the message names them)."""


class UnknownExperts(ValueError):
    """``routing.experts`` names experts the config does not have."""


def capable(needs: set[str], abilities: dict[str, frozenset[str]], names: Sequence[str]) -> list[str]:
    """The experts among ``names`` that have every capability in ``needs``; NoCapableExpert naming
    what is missing if none has."""
    found = [name for name in names if needs <= abilities[name]]
    if not found:
        have = {name: sorted(abilities[name]) for name in names}
        raise NoCapableExpert(
            f"this request needs {', '.join(sorted(needs))}, which no candidate expert is configured "
            f"for (capabilities: {json.dumps(have)})"
        )
    return found


def routing_question(
    request: RouterFields, experts: Sequence[str], abilities: dict[str, frozenset[str]]
) -> RouteRequest:
    """What the policy is asked for a routed request: its conversation, the experts its
    ``routing.experts`` allows that have the capabilities it needs, and its cost weight
    (UnknownExperts / NoCapableExpert otherwise). The router replica and the dry run both ask this."""
    options = request.routing or RoutingOptions()
    unknown = sorted(set(options.experts or ()) - set(experts))
    if unknown:
        raise UnknownExperts(f"routing.experts: unknown experts {unknown}")
    allowed = [name for name in experts if options.experts is None or name in options.experts]
    return RouteRequest(
        request.routing_messages(), capable(request.needs(), abilities, allowed), options.cost_weight
    )


def _capability_error(exc: NoCapableExpert) -> APIError:
    return APIError(400, str(exc), "invalid_request_error", code="capability_unsupported", param="model")


def engine_param(error: Any, request: RouterFields) -> str | None:
    """The field an engine's refusal concerns: its own ``param``, else the first field the client
    set that its message names (``n must be 1 when ...``, ```logprobs` must be ...``)."""
    if param := getattr(error, "param", None):
        return str(param)
    message = str(getattr(error, "message", ""))
    for key in request.model_dump(exclude_unset=True, by_alias=True):
        if message.startswith(f"{key} ") or f"`{key}`" in message or f"parameter={key}" in message:
            return key
    return None


class ExpertRouter:
    """Routes each chat request to one expert deployment and reports which one answered."""

    def __init__(self, config: dict[str, Any], experts: dict[str, Any]):
        self.config = AppConfig.parse(config)
        self.metrics = RouterMetrics()
        self._down_until: dict[str, float] = {}  # expert -> monotonic time it is skipped until
        set_inference_threads(self.config.ingress.decision_threads)
        self.decider: MicroBatcher[RouteRequest, RoutingDecision] | None = None
        self.fast: DistilledTier | None = None
        """The overload tier of an offloaded policy, learning it from its decisions (see _decide)."""
        self.use_policy(self.config.policy, *self.load_policy(self.config.policy))
        self.shed = 0
        self.shed_by_tier: Counter[str] = Counter()
        experts = {**experts, **clients(self.config)}
        self._experts = experts
        self._abilities = {name: self.config.abilities(name) for name in self.config.expert_names}
        capacities = {
            name: self.config.serving(name).all_engine_kwargs.get("max_num_seqs")
            for name in self.config.expert_names
        }
        self.load = LoadTracker(list(experts), capacities)
        self._caps = {e.name: e.max_in_flight for e in self.config.experts}
        self.can_scale: dict[str, bool] = {}
        """Experts whose autoscaling can still add replicas (kept current by the ingress)."""
        self.lost: set[str] = set()
        """Experts with no running replica though they keep at least one (node or replica lost, not
        yet replaced; kept current by the ingress): tried after every other candidate."""
        self.handles = {name: handle.options(stream=True) for name, handle in experts.items()}
        self._args_policy = self.config.policy
        self.policy_update_error: str | None = None

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve's in-place update of this deployment's ``user_config`` (``RouterUserConfig``): a
        changed ``policy`` is built off the event loop while the replica keeps serving, then routes
        every request that follows. One that fails to build is refused and the current policy stays
        (logged, and on ``/status`` as ``policy.update_error``)."""
        try:
            wanted = RouterUserConfig.model_validate(user_config or {}).policy or self._args_policy
            if wanted == self.config.policy:
                return
            policy, prior, lesson = await asyncio.to_thread(self.load_policy, wanted)
        except Exception as exc:
            self.policy_update_error = f"{type(exc).__name__}: {exc}"
            logger.error("policy update refused; still routing by %s: %s", self.config.policy, exc)
            return
        self.use_policy(wanted, policy, prior, lesson)
        self.policy_update_error = None
        logger.info("routing by policy %s now", wanted)

    def load_policy(self, config: PolicyConfig) -> tuple[RoutingPolicy, dict[str, float], Lesson]:
        """The policy of ``config`` with its lazily built parts loaded now (not on the first user
        request), and its decisions on the warm-up queries (``router.skills.warm_queries``): the
        mean of their scores starts the moving average that decides when overload sheds a decision
        before the fast tier is ready (-inf stays -inf: experts the policy never routes to stay
        last), and they are the fast tier's first lesson. Blocking."""
        policy = build_policy(config, self.config.experts)
        texts = warm_queries()
        decisions = policy.route_batch([RouteRequest([Message("user", t)]) for t in texts])
        prior = {name: float(np.mean([d.scores[name] for d in decisions])) for name in policy.experts}
        return policy, prior, (texts, decisions)

    def use_policy(
        self, config: PolicyConfig, policy: RoutingPolicy, prior: dict[str, float], lesson: Lesson
    ) -> None:
        """Route with ``policy`` from now on (no await here: one request sees one policy). Decisions
        already queued for the worker thread are made by whichever policy is current when their
        batch runs. A new fast tier learns ``lesson`` (the policy's warm-up decisions) first, so
        it is ready before the first shed decision."""
        decisions = self.config.ingress.decisions
        offload = decisions.offload == "always" or (decisions.offload == "auto" and policy.blocking)
        names = self.config.expert_names
        learns = offload and decisions.fast_tier and len(names) > 1
        fast = DistilledTier(names, ready_after=decisions.fast_tier_after) if learns else None
        if fast is not None and lesson[0]:
            fast.learn(*lesson)
        decide = learning(policy, fast, names) if fast is not None else policy.route_batch
        if offload and self.decider is not None:
            self.decider.fn = decide
        elif offload:
            self.decider = MicroBatcher(decide, decisions.max_batch_size, decisions.max_wait_ms)
        else:
            self.decider = None  # a former worker thread idles until the replica stops
        self.fast = fast
        self.policy, self._prior = policy, prior
        self.config = self.config.model_copy(update={"policy": config})
        self.models = ModelList(
            data=[ModelCard(id=ROUTER_MODEL_NAME, description=f"routes by policy '{config.name}'")]
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

    async def _open(self, name: str, request: RouterFields) -> tuple[Any, AsyncIterator[Any], Attempt]:
        """Send the request to expert ``name``; its first reply, the rest of its reply stream and the
        load tracker's record of the attempt (finished here unless it streams on).

        Raises ExpertFailed when the expert cannot answer (the next one may), APIError(400) when
        its engine refuses the request itself.
        """
        llm_request = expert_request(self.config.expert(name), request)
        timeout = self.config.ingress.expert_timeout_s
        attempt = self.load.start(name)
        replies = getattr(self.handles[name], request.call_method).remote(llm_request)
        try:
            try:
                first = await asyncio.wait_for(replies.__anext__(), timeout)
            except asyncio.TimeoutError:
                replies.cancel()  # the engine stops generating for an abandoned request
                raise ExpertFailed(f"{name}: no answer within {timeout}s") from None
            except asyncio.CancelledError:  # the client went away
                replies.cancel()
                raise
            except Exception as exc:  # replica died, actor error, engine crash, empty stream
                replies.cancel()
                raise ExpertFailed(f"{name}: {type(exc).__name__}: {exc}") from exc
            head = first[0] if isinstance(first, list) and first else first
            error = _stream_error(head) if isinstance(head, str) else getattr(head, "error", None)
            if error is not None:
                code = int(getattr(error, "code", 500) or 500)
                replies.cancel()
                if 400 <= code < 500:  # the request itself is wrong for this expert (e.g. too long)
                    raise APIError(
                        400,
                        f"expert '{name}': {error.message}",
                        "invalid_request_error",
                        param=engine_param(error, request),
                    )
                raise ExpertFailed(f"{name}: {error.message}")
        except BaseException:
            self.load.finish(attempt)
            raise
        if request.stream:
            self.load.first(attempt)
        else:  # the whole answer: its tokens tell the first token's time apart
            tokens = _completion_tokens(head)
            self.load.first(attempt, tokens)
            self.load.finish(attempt, tokens)
        return first, replies, attempt

    def _check_limits(self, request: RouterFields) -> None:
        """The configured caps on what one request may ask for (400 with the limit named)."""
        problems = request.over_limits(self.config.ingress.security)
        if problems:
            raise APIError(
                400, "; ".join(msg for _, msg in problems), "invalid_request_error", param=problems[0][0]
            )

    def _capable(self, request: RouterFields, names: Sequence[str]) -> list[str]:
        """The experts among ``names`` that have every capability the request needs (400 naming
        what is missing if none has)."""
        try:
            return capable(request.needs(), self._abilities, names)
        except NoCapableExpert as exc:
            raise _capability_error(exc) from None

    async def _decide(self, question: RouteRequest) -> tuple[RoutingDecision, str | None]:
        """The policy's decision: in the worker thread, batched with concurrent ones, or inline
        for cheap policies (``ingress.decisions``). Under overload (the wait over ``max_queue_ms``)
        the decision is shed: made per query by the fast tier once it has learned the policy, else
        (or if it fails) from the moving average of the policy's scores; the tier is returned."""
        if self.decider is None:
            return self.policy.route_batch([question])[0], None
        budget_ms = self.config.ingress.decisions.max_queue_ms
        if budget_ms and self.decider.expected_wait_s() * 1e3 > budget_ms:
            tier, scores = "prior", self._prior
            if self.fast is not None and self.fast.ready:
                try:
                    scores = in_order_of(self.fast.scores(question.messages), self._prior)
                    tier = "fast"
                except Exception as exc:
                    logger.warning("the fast tier failed; deciding from the prior: %s", exc)
            self.shed += 1
            self.shed_by_tier[tier] += 1
            self.metrics.shed(tier)
            return self.policy.rank(scores, question.candidates), tier
        decision = await self.decider.submit(question)
        for name, score in decision.scores.items():
            if math.isfinite(score):
                self._prior[name] = 0.98 * self._prior[name] + 0.02 * score
        return decision, None

    async def _candidates(self, request: RouterFields) -> tuple[RoutingDecision, bool, str | None]:
        """Experts to try, best first, with their scores; whether the policy chose (else: bypass);
        and the tier overload shed the decision to (None: the policy decided)."""
        if request.model == ROUTER_MODEL_NAME:
            try:
                question = routing_question(request, list(self.handles), self._abilities)
            except UnknownExperts as exc:
                raise APIError(400, str(exc), "invalid_request_error", param="routing.experts") from None
            except NoCapableExpert as exc:
                raise _capability_error(exc) from None
            decision, shed_to = await self._decide(question)
            return decision, True, shed_to
        if request.model not in self.handles:
            known = ", ".join([ROUTER_MODEL_NAME, *self.handles])
            raise APIError(
                404,
                f"The model '{request.model}' does not exist; known: {known}",
                "invalid_request_error",
                code="model_not_found",
                param="model",
            )
        return RoutingDecision(tuple(self._capable(request, [request.model])), {}), False, None

    def _balance(
        self, candidates: list[str], scores: dict[str, float], routed: bool, options: RoutingOptions
    ) -> tuple[list[str], dict[str, Any]]:
        """``candidates`` re-ranked by score - load weight x expected wait (routed requests), those
        whose expected TTFT exceeds ``max_ttft_ms`` moved last (503 if none meets it and the client
        is strict), and those at their ``max_in_flight`` left out (429 if none is left); and what
        load did, for ``routing.explain`` and the headers."""
        settings, state = self.config.ingress.load, self.load.state
        weight = settings.load_weight if options.load_weight is None else options.load_weight
        waits = {
            name: 0.0
            if settings.prefer_scaling and self.can_scale.get(name)
            else state[name].expected_wait_s()
            for name in candidates
        }
        slack = settings.wait_slack_ms / 1e3
        ranking = load_aware_ranking(candidates, scores, waits, weight, slack) if routed else list(candidates)
        slow: list[str] = []
        if options.max_ttft_ms is not None:
            slow = [n for n in ranking if (state[n].expected_ttft_s() or 0.0) * 1e3 > options.max_ttft_ms]
            if len(slow) == len(ranking) and options.strict_latency:
                raise APIError(
                    503,
                    f"no candidate expert is expected to start answering within {options.max_ttft_ms:g} ms "
                    f"(expected TTFT ms: { {n: state[n].expected_ttft_s() * 1e3 for n in slow} })",
                    "service_unavailable",
                    code="latency_objective_unmet",
                    param="routing.max_ttft_ms",
                )
            ranking = [n for n in ranking if n not in slow] + slow
        full = [n for n in ranking if self._caps.get(n) is not None and state[n].in_flight >= self._caps[n]]
        if len(full) == len(ranking):
            self.metrics.overloaded()
            retry = self.config.ingress.load.retry_after_s
            raise APIError(
                429,
                f"every candidate expert is at its max_in_flight ({', '.join(full)}); retry in {retry}s",
                "rate_limit_error",
                code="experts_overloaded",
                headers={"retry-after": str(retry)},
            )
        ranking = [n for n in ranking if n not in full]
        for name in full:
            self.metrics.spilled(name)
        info = {
            "load_weight": weight,
            "policy_choice": candidates[0],
            "changed": ranking[0] != candidates[0],
            "expected_wait_ms": {n: round(w * 1e3, 3) for n, w in waits.items()},
            "passed_over": slow,
            "spilled": full,
        }
        return ranking, info

    async def _route(self, request: RouterFields) -> Routed:
        """Try the candidates best first; the expert that answered, with its first reply."""
        self._check_limits(request)
        started = time.perf_counter()
        decision, routed, shed_to = await self._candidates(request)
        candidates, scores = list(decision.ranking), decision.scores
        routing_ms = (time.perf_counter() - started) * 1e3
        now = time.monotonic()
        live = [name for name in candidates if self._down_until.get(name, 0.0) <= now]
        if not live:
            wait = max(self._down_until[name] for name in candidates) - now
            raise APIError(
                503,
                f"experts unavailable after recent failures ({', '.join(candidates)}); retry in {wait:.1f}s",
                "service_unavailable",
                code="experts_unavailable",
            )
        options = request.routing or RoutingOptions()
        ranking, load = self._balance(live, scores, routed, options)
        ranking = [n for n in ranking if n not in self.lost] + [n for n in ranking if n in self.lost]
        candidates = ranking[: self.config.ingress.max_attempts]
        if self.config.ingress.security.log_prompts:
            logger.info("routing to %s: %r", candidates, request.routing_messages()[-1].content[:2000])
        failures = []
        for name in candidates:
            try:
                first, rest, attempt = await self._open(name, request)
            except ExpertFailed as exc:
                logger.warning("expert failed, trying the next one: %s", exc)
                self._down_until[name] = time.monotonic() + self.config.ingress.expert_cooldown_s
                self.metrics.fallback(name)
                failures.append(str(exc))
                continue
            self._down_until.pop(name, None)
            self.metrics.answered(name, routed, routing_ms)
            info = RoutingInfo(
                expert=name,
                routed=routed,
                scores={k: (v if math.isfinite(v) else None) for k, v in scores.items()},
                routing_ms=round(routing_ms, 3),
                fallbacks=failures,
                shed=shed_to is not None,
                shed_tier=shed_to,
                note=decision.note,
                load=load,
            )
            return Routed(name, first, rest, info, attempt)
        raise APIError(
            503,
            "no expert could answer: " + " | ".join(failures),
            "service_unavailable",
            code="experts_unavailable",
        )

    async def complete(self, request: RouterFields) -> tuple[dict[str, Any], dict[str, str]]:
        """Answer one request: the expert's whole response with ``expert`` (and ``routing`` when
        asked) added; also the response headers that explain the routing."""
        routed = await self._route(request)
        name = routed.expert
        body = routed.first if isinstance(routed.first, dict) else routed.first.model_dump()
        usage = body.get("usage") or {}
        self.metrics.usage(name, usage)
        routed.info.cost_usd = self.config.expert(name).price.cost(
            usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
        )
        body["expert"] = name
        if request.routing and request.routing.explain:
            body["routing"] = routed.info.model_dump()
        return body, routed.headers()

    async def stream(self, request: RouterFields) -> tuple[AsyncIterator[str], dict[str, str]]:
        """Answer as OpenAI server-sent events; every chunk names the expert. Fallback happens
        before the first chunk; a failure after it ends the stream with an error event."""
        routed = await self._route(request)
        events = self._sse_events(routed, request.wants_usage_chunk())
        # A stream the server never starts (client gone before the first byte) still ends its attempt.
        weakref.finalize(events, self.load.finish, routed.attempt)
        return events, routed.headers()

    async def _sse_events(self, routed: Routed, usage_chunk: bool) -> AsyncIterator[str]:
        name, finished = routed.expert, False
        events, usage = _with_expert(routed.first, name, usage_chunk)
        try:
            yield events
            try:
                async for batch in routed.rest:
                    events, batch_usage = _with_expert(batch, name, usage_chunk)
                    usage = batch_usage or usage
                    yield events
            except Exception as exc:  # the expert died mid-answer: say so in the stream
                logger.warning("expert %s failed mid-stream: %s", name, exc)
                error = ErrorInfo(
                    message=f"expert '{name}' failed mid-stream: {exc}", type="service_unavailable"
                )
                yield f"data: {json.dumps({'error': error.model_dump(), 'expert': name})}\n\n"
            finished = True
            self.metrics.usage(name, usage)
            self.load.finish(routed.attempt, _completion_tokens(usage), streamed=True)
            yield "data: [DONE]\n\n"
        finally:
            self.load.finish(routed.attempt)  # no-op when finished above
            if not finished:  # the client went away mid-stream: stop the expert's generation
                routed.rest.cancel()


@dataclass
class Routed:
    """The expert that took the request, its first reply and the rest of its stream."""

    expert: str
    first: Any
    rest: AsyncIterator[Any]
    info: RoutingInfo
    attempt: Attempt

    def headers(self) -> dict[str, str]:
        """Response headers that explain the routing."""
        headers = {
            "x-expert": self.expert,
            "x-routing-ms": f"{self.info.routing_ms:.3f}",
            "x-routed": str(self.info.routed).lower(),
            "x-fallbacks": str(len(self.info.fallbacks)),
            "x-routing-scores": json.dumps(self.info.scores, separators=(",", ":")),
        }
        if self.info.cost_usd is not None:
            headers["x-cost-usd"] = f"{self.info.cost_usd:.8f}"
        if self.info.shed:
            headers["x-routing-shed"] = "true"
            headers["x-routing-tier"] = self.info.shed_tier or "prior"
        load = self.info.load or {}
        if load.get("changed"):
            headers["x-routing-load-changed"] = "true"
            headers["x-routing-policy-choice"] = load["policy_choice"]
        if load.get("expected_wait_ms"):
            headers["x-expected-wait-ms"] = json.dumps(load["expected_wait_ms"], separators=(",", ":"))
        return headers


def _completion_tokens(reply: Any) -> int:
    """Output tokens a reply (or its usage) reports; 0 if none."""
    usage = reply.get("usage", reply) if isinstance(reply, dict) else getattr(reply, "usage", reply)
    value = (
        usage.get("completion_tokens") if isinstance(usage, dict) else getattr(usage, "completion_tokens", 0)
    )
    return int(value or 0)


def _stream_error(events: str) -> SimpleNamespace | None:
    """The error a stream opens with (``code``, ``message``, like an ErrorResponse's), or None.
    vLLM checks some fields only once it generates (e.g. ``top_logprobs`` against the engine's
    limit) and then streams the error as the first event instead of answering it."""
    first = events.split("\n\n", 1)[0]
    if not first.startswith("data: {"):
        return None
    try:
        error = json.loads(first.removeprefix("data: ")).get("error")
    except ValueError:
        return None
    if not isinstance(error, dict):
        return None
    code = error.get("code")
    code = code if isinstance(code, int) else 500
    return SimpleNamespace(code=code, message=error.get("message", ""), param=error.get("param"))


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _with_expert(batch: Any, name: str, usage_chunk: bool = True) -> tuple[str, dict | None]:
    """SSE text of one batch of engine chunks (``data: {...}``), each JSON chunk tagged with the
    expert; and the usage a chunk reported, if any. Without ``usage_chunk`` (the client did not
    ask for usage) the final usage-only chunk is read but not passed on."""
    events = batch if isinstance(batch, list) else [batch]
    out, usage = [], None
    for event in events:
        if not isinstance(event, str):  # an ErrorResponse in mid-stream
            out.append(f"data: {json.dumps({'error': event.error.model_dump(), 'expert': name})}\n\n")
            continue
        for line in event.split("\n\n"):
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            usage = chunk.get("usage") or usage
            if not usage_chunk:
                if chunk.get("usage") and not chunk.get("choices"):
                    continue
                chunk.pop("usage", None)
            chunk["expert"] = name
            out.append(f"data: {json.dumps(chunk)}\n\n")
    return "".join(out), usage
