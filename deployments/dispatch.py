"""The dispatcher: one request's way from its parsed body to the expert that answers it, as
explicit stages over one :class:`Plan`:

    validate → candidates → decide → balance → call with fallback → respond

- **validate**: the configured caps on what one request may ask for (``ingress.security``);
- **candidates**: routed (``model: "router"``) or named; ``routing.experts``; the experts with
  every capability the request needs;
- **decide**: the policy's ranking (``router/decisions.py``: batched off the loop, shed under
  overload);
- **balance**: experts cooling down after a failure skipped, the ranking traded against expected
  waits (``router/balance.py``), ``max_ttft_ms`` and ``max_in_flight``, experts with no replica last;
- **call with fallback**: best first, the next on failure, abandoned calls cancelled
  (``deployments/experts/``);
- **respond**: the expert's whole reply, or its stream, naming the expert.

Plain Python over the experts' handles (``handle.options(stream=True).chat.remote(request)``), so
it is testable without a cluster. Every refusal is a :class:`RoutingError`; the HTTP layer
(``deployments/ingress.py``) turns each kind into its OpenAI-style error response.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from deployments.config import AppConfig, ExpertConfig
from deployments.experts import clients, deployment
from deployments.metrics import RouterMetrics
from deployments.openai_api import (
    ChatRequest,
    ErrorInfo,
    ModelCard,
    ModelList,
    RouterFields,
    RoutingInfo,
    RoutingOptions,
)
from router.balance import Attempt, LoadTracker, load_aware_ranking
from router.config import ROUTER_MODEL_NAME, RouterUserConfig
from router.decisions import Decider, LoadedPolicy
from router.encoder import set_inference_threads
from router.policy import RouteRequest, RoutingDecision

logger = logging.getLogger("ray.serve")


class RoutingError(Exception):
    """A request the dispatcher refuses; ``param`` names the field it concerns, if one does."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class InvalidRequest(RoutingError):
    """The request asks for something no expert may be asked (a configured cap, an engine's refusal)."""


class UnknownModel(RoutingError):
    """``model`` names neither the router nor an expert."""


class UnknownExperts(InvalidRequest):
    """``routing.experts`` names experts the config does not have."""


class NoCapableExpert(InvalidRequest):
    """No candidate expert has every capability the request needs (the message names them)."""


class ExpertsOverloaded(RoutingError):
    """Every candidate expert is at its ``max_in_flight``; retry after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class LatencyObjectiveUnmet(RoutingError):
    """No candidate is expected to start answering within ``routing.max_ttft_ms`` (strict)."""


class ExpertsUnavailable(RoutingError):
    """Every candidate failed, or is cooling down after a failure."""


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


def capable(needs: set[str], abilities: dict[str, frozenset[str]], names: Sequence[str]) -> list[str]:
    """The experts among ``names`` that have every capability in ``needs``; NoCapableExpert naming
    what is missing if none has."""
    found = [name for name in names if needs <= abilities[name]]
    if not found:
        have = {name: sorted(abilities[name]) for name in names}
        raise NoCapableExpert(
            f"this request needs {', '.join(sorted(needs))}, which no candidate expert is configured "
            f"for (capabilities: {json.dumps(have)})",
            param="model",
        )
    return found


def routing_question(
    request: RouterFields, experts: Sequence[str], abilities: dict[str, frozenset[str]]
) -> RouteRequest:
    """What the policy is asked for a routed request: its conversation, the experts its
    ``routing.experts`` allows that have the capabilities it needs, and its cost weight
    (UnknownExperts / NoCapableExpert otherwise). The dispatcher and the dry run both ask this."""
    options = request.routing or RoutingOptions()
    unknown = sorted(set(options.experts or ()) - set(experts))
    if unknown:
        raise UnknownExperts(f"routing.experts: unknown experts {unknown}", param="routing.experts")
    allowed = [name for name in experts if options.experts is None or name in options.experts]
    return RouteRequest(
        request.routing_messages(), capable(request.needs(), abilities, allowed), options.cost_weight
    )


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


@dataclass
class Plan:
    """One request on its way through the stages; each stage fills in its part."""

    request: RouterFields
    options: RoutingOptions
    routed: bool = False
    """The policy chooses (else the client named the expert)."""
    question: RouteRequest | None = None
    """What the policy is asked (routed requests)."""
    decision: RoutingDecision = RoutingDecision((), {})
    shed_to: str | None = None
    """The tier overload shed the decision to (None: the policy decided)."""
    routing_ms: float = 0.0
    ranking: list[str] = field(default_factory=list)
    """Whom to call, best first (after balance)."""
    load: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


class Dispatcher:
    """Routes each request to one expert, calls it with fallback and says which one answered."""

    def __init__(self, config: dict[str, Any], experts: dict[str, Any]):
        self.config = AppConfig.parse(config)
        self.metrics = RouterMetrics()
        self._down_until: dict[str, float] = {}  # engine -> monotonic time its experts are skipped until
        set_inference_threads(self.config.ingress.decision_threads)
        self._args_policy = self.config.policy
        self.decider = Decider(
            self.config.ingress.decisions,
            self.config.expert_names,
            LoadedPolicy.load(self.config.policy, self.config.experts),
        )
        self.policy_update_error: str | None = None
        experts = {**experts, **clients(self.config)}
        self._experts = experts
        self.handles = {name: handle.options(stream=True) for name, handle in experts.items()}
        self._abilities = {name: self.config.abilities(name) for name in self.config.expert_names}
        engines = {name: self.config.serving(name) for name in self.config.expert_names}
        capacities = {  # remote experts: unknown
            name: engine.all_engine_kwargs.get("max_num_seqs") if engine else None
            for name, engine in engines.items()
        }
        answering = {name: engine.name for name, engine in engines.items() if engine is not None}
        self.load = LoadTracker(list(experts), capacities, answering)  # an adapter's load: its engine's
        self._deployments = {  # the Serve deployment and engine answering for each local/adapter expert
            e.name: (name, engines[e.name])
            for e in self.config.experts
            if (name := deployment(e, self.config)) is not None
        }
        self._caps = {e.name: e.max_in_flight for e in self.config.experts}
        self.can_scale: dict[str, bool] = {}
        """Experts whose autoscaling can still add replicas (see :meth:`observe_replicas`)."""
        self.lost: set[str] = set()
        """Experts with no running replica though they keep at least one (node or replica lost, not
        yet replaced): tried after every other candidate."""

    # -- the stages -------------------------------------------------------------------------

    def validate(self, request: RouterFields) -> Plan:
        """The configured caps on what one request may ask for (InvalidRequest naming the limit)."""
        problems = request.over_limits(self.config.ingress.security)
        if problems:
            raise InvalidRequest("; ".join(msg for _, msg in problems), param=problems[0][0])
        return Plan(request, request.routing or RoutingOptions())

    def candidates(self, plan: Plan) -> None:
        """A routed request's question for the policy (its conversation, the allowed experts with
        every capability it needs, its cost weight); a request naming an expert has that expert as
        its decision."""
        request = plan.request
        if request.model == ROUTER_MODEL_NAME:
            plan.routed = True
            plan.question = routing_question(request, list(self.handles), self._abilities)
            return
        if request.model not in self.handles:
            known = ", ".join([ROUTER_MODEL_NAME, *self.handles])
            raise UnknownModel(f"The model '{request.model}' does not exist; known: {known}", param="model")
        plan.decision = RoutingDecision(tuple(capable(request.needs(), self._abilities, [request.model])), {})

    async def decide(self, plan: Plan) -> None:
        """The policy's ranking of a routed request's candidates (see ``router.decisions.Decider``)."""
        if plan.question is None:
            return
        plan.decision, plan.shed_to = await self.decider.decide(plan.question)
        if plan.shed_to is not None:
            self.metrics.shed(plan.shed_to)

    def balance(self, plan: Plan) -> None:
        """The ranking to call: experts cooling down after a failure left out (503 if all are);
        routed requests re-ranked by score - load weight x expected wait; those whose expected
        TTFT exceeds ``max_ttft_ms`` moved last (LatencyObjectiveUnmet if none meets it and the
        client is strict); those at their ``max_in_flight`` left out (ExpertsOverloaded if all
        are); experts with no running replica last; at most ``max_attempts``. Records what load
        did in ``plan.load``, for ``routing.explain`` and the headers."""
        now, ranked = time.monotonic(), list(plan.decision.ranking)
        live = [name for name in ranked if not self._cooling(name, now)]
        if not live:
            wait = max(self._down_until[self.load.engine(name)] for name in ranked) - now
            raise ExpertsUnavailable(
                f"experts unavailable after recent failures ({', '.join(ranked)}); retry in {wait:.1f}s"
            )
        settings, state, options = self.config.ingress.load, self.load.state, plan.options
        weight = settings.load_weight if options.load_weight is None else options.load_weight
        waits = {
            name: 0.0
            if settings.prefer_scaling and self.can_scale.get(name)
            else state[name].expected_wait_s()
            for name in live
        }
        slack = settings.wait_slack_ms / 1e3
        scores = plan.decision.scores
        ranking = load_aware_ranking(live, scores, waits, weight, slack) if plan.routed else live
        slow: list[str] = []
        if options.max_ttft_ms is not None:
            slow = [n for n in ranking if (state[n].expected_ttft_s() or 0.0) * 1e3 > options.max_ttft_ms]
            if len(slow) == len(ranking) and options.strict_latency:
                raise LatencyObjectiveUnmet(
                    f"no candidate expert is expected to start answering within {options.max_ttft_ms:g} ms "
                    f"(expected TTFT ms: { {n: state[n].expected_ttft_s() * 1e3 for n in slow} })",
                    param="routing.max_ttft_ms",
                )
            ranking = [n for n in ranking if n not in slow] + slow
        full = [n for n in ranking if self._caps.get(n) is not None and state[n].in_flight >= self._caps[n]]
        if len(full) == len(ranking):
            self.metrics.overloaded()
            retry = settings.retry_after_s
            raise ExpertsOverloaded(
                f"every candidate expert is at its max_in_flight ({', '.join(full)}); retry in {retry}s",
                retry,
            )
        for name in full:
            self.metrics.spilled(name)
        ranking = [n for n in ranking if n not in full]
        plan.load = {
            "load_weight": weight,
            "policy_choice": live[0],
            "changed": ranking[0] != live[0],  # by load (experts without a replica go last below)
            "expected_wait_ms": {n: round(w * 1e3, 3) for n, w in waits.items()},
            "passed_over": slow,
            "spilled": full,
        }
        ranking = [n for n in ranking if n not in self.lost] + [n for n in ranking if n in self.lost]
        plan.ranking = ranking[: self.config.ingress.max_attempts]

    def _cooling(self, name: str, now: float) -> bool:
        """Whether ``name``'s engine failed less than ``expert_cooldown_s`` ago (a LoRA adapter's
        engine is its base's: they cool down together)."""
        return self._down_until.get(self.load.engine(name), 0.0) > now

    async def call(self, plan: Plan) -> Routed:
        """Call the ranking best first: the first expert that answers, with its first reply.
        A failed expert's engine (with every expert it serves) is skipped for ``expert_cooldown_s``;
        ExpertsUnavailable if none answers."""
        if self.config.ingress.security.log_prompts:
            logger.info("routing to %s: %r", plan.ranking, plan.request.routing_messages()[-1].content[:2000])
        for name in plan.ranking:
            if plan.failures and self._cooling(name, time.monotonic()):
                continue  # a LoRA adapter (or base) on an engine that just failed: not called
            try:
                first, rest, attempt = await self._open(name, plan.request)
            except ExpertFailed as exc:
                logger.warning("expert failed, trying the next one: %s", exc)
                self._down_until[self.load.engine(name)] = (
                    time.monotonic() + self.config.ingress.expert_cooldown_s
                )
                self.metrics.fallback(name)
                plan.failures.append(str(exc))
                continue
            self._down_until.pop(self.load.engine(name), None)
            self.metrics.answered(name, plan.routed, plan.routing_ms)
            scores = plan.decision.scores
            info = RoutingInfo(
                expert=name,
                routed=plan.routed,
                scores={k: (v if math.isfinite(v) else None) for k, v in scores.items()},
                routing_ms=round(plan.routing_ms, 3),
                fallbacks=plan.failures,
                shed=plan.shed_to is not None,
                shed_tier=plan.shed_to,
                note=plan.decision.note,
                load=plan.load,
            )
            return Routed(name, first, rest, info, attempt)
        raise ExpertsUnavailable("no expert could answer: " + " | ".join(plan.failures))

    async def route(self, request: RouterFields) -> Routed:
        """validate → candidates → decide → balance → call with fallback."""
        plan = self.validate(request)
        started = time.perf_counter()
        self.candidates(plan)
        await self.decide(plan)
        plan.routing_ms = (time.perf_counter() - started) * 1e3
        self.balance(plan)
        return await self.call(plan)

    async def complete(self, request: RouterFields) -> tuple[dict[str, Any], dict[str, str]]:
        """Respond with the expert's whole response plus ``expert`` (and ``routing`` when asked),
        and the response headers that explain the routing."""
        routed = await self.route(request)
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
        """Respond as OpenAI server-sent events; every chunk names the expert. Fallback happens
        before the first chunk; a failure after it ends the stream with an error event."""
        routed = await self.route(request)
        events = self._sse_events(routed, request.wants_usage_chunk())
        # A stream the server never starts (client gone before the first byte) still ends its attempt.
        weakref.finalize(events, self.load.finish, routed.attempt)
        return events, routed.headers()

    # -- the call itself --------------------------------------------------------------------

    async def _open(self, name: str, request: RouterFields) -> tuple[Any, AsyncIterator[Any], Attempt]:
        """Send the request to expert ``name``; its first reply, the rest of its reply stream and the
        load tracker's record of the attempt (finished here unless it streams on).

        Raises ExpertFailed when the expert cannot answer (the next one may), InvalidRequest when
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
                    raise InvalidRequest(
                        f"expert '{name}': {error.message}", param=engine_param(error, request)
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

    # -- the replica's state ----------------------------------------------------------------

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve's in-place update of this deployment's ``user_config`` (``RouterUserConfig``): a
        changed ``policy`` is built off the event loop while the replica keeps serving, then routes
        every request that follows. One that fails to build is refused and the current policy stays
        (logged, and on ``/status`` as ``policy.update_error``)."""
        try:
            wanted = RouterUserConfig.model_validate(user_config or {}).policy or self._args_policy
            if wanted == self.config.policy:
                return
            loaded = await asyncio.to_thread(LoadedPolicy.load, wanted, self.config.experts)
        except Exception as exc:
            self.policy_update_error = f"{type(exc).__name__}: {exc}"
            logger.error("policy update refused; still routing by %s: %s", self.config.policy, exc)
            return
        self.decider.use(loaded)
        self.config = self.config.model_copy(update={"policy": wanted})
        self.policy_update_error = None
        logger.info("routing by policy %s now", wanted)

    def observe_replicas(self, routers: int, running: dict[str, int]) -> None:
        """What Serve says runs: ``routers`` router replicas, and running replicas per Serve
        deployment (read in the background by the ingress, never on the request path). Sets each
        expert's replica count (for expected waits), whether it can still scale up (for
        ``ingress.load.prefer_scaling``) and whether it is lost (none running though it keeps one)."""
        for name in self.config.expert_names:
            self.load.state[name].routers = max(routers, 1)
        for name, (answering, engine) in self._deployments.items():
            if answering not in running:
                continue
            count, scaling = running[answering], engine.autoscaling
            self.load.state[name].replicas = max(count, 1)
            self.can_scale[name] = count < scaling.max_replicas
            if count == 0 and scaling.min_replicas > 0:
                self.lost.add(name)
            else:
                self.lost.discard(name)

    def models(self) -> ModelList:
        """``/v1/models``: the router and every expert, with prices."""
        router = ModelCard(id=ROUTER_MODEL_NAME, description=f"routes by policy '{self.config.policy.name}'")
        experts = [
            ModelCard(id=e.name, description=e.description, price=e.price.model_dump())
            for e in self.config.experts
        ]
        return ModelList(data=[router, *experts])

    def model(self, name: str) -> ModelCard:
        """``/v1/models/{name}``: the router's or an expert's card; UnknownModel for any other name."""
        cards = {card.id: card for card in self.models().data}
        if name not in cards:
            raise UnknownModel(f"The model '{name}' does not exist; known: {', '.join(cards)}", param="model")
        return cards[name]

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

    def status(self) -> dict[str, Any]:
        """The policy and how its decisions run, the live load per expert and the experts."""
        policy = self.decider.policy
        return {
            "policy": {
                **self.config.policy.model_dump(),
                "kind": policy.kind,
                "unscored_experts": list(policy.unscored),
                "update_error": self.policy_update_error,
            },
            "decisions": {"threads": self.config.ingress.decision_threads, **self.decider.stats()},
            "load": {
                "settings": self.config.ingress.load.model_dump(),
                "experts": {
                    name: {
                        **values,
                        "max_in_flight": self._caps.get(name),
                        "can_scale": self.can_scale.get(name),
                        "lost": name in self.lost,
                    }
                    for name, values in self.load.snapshot().items()
                },
            },
            "experts": [
                {
                    "name": e.name,
                    "model": e.model,
                    "kind": e.kind,
                    "accelerator": engine.accelerator if (engine := self.config.serving(e.name)) else None,
                    "price": e.price.model_dump(),
                    "routed_by_policy": e.name not in policy.unscored,
                }
                for e in self.config.experts
            ],
        }


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
