"""The router's fallback logic, driven directly with in-process expert handles (no cluster).

These are unit tests of the ranking/fallback loop; the real Serve + vLLM path is covered by the
end-to-end tests.
"""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace

import pytest

from deployments.dispatch import Dispatcher, RoutingError
from deployments.ingress import api_error
from deployments.openai_api import ChatRequest

ARGS = {
    "policy": {"name": "fixed", "args": {"expert": "a"}},
    "ingress": {"max_attempts": 2, "expert_timeout_s": 0.5},
    "experts": [{"name": n, "model": "builtin:tiny-llama"} for n in ("a", "b", "c")],
}
REQUEST = ChatRequest.model_validate({"messages": [{"role": "user", "content": "hi"}]})


def reply(text: str) -> dict:
    """A non-streamed answer, as a remote expert yields it (a local one: the same as a model)."""
    return {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


class ExpertHandle:
    """Behaves like ``handle.options(stream=True).chat.remote(request)`` of one expert."""

    def __init__(self, behaviour):
        self.behaviour, self.calls, self.replies = behaviour, 0, []

    def options(self, **_):
        return self

    @property
    def chat(self):
        return self

    @property
    def check_health(self):
        return SimpleNamespace(remote=self._health)

    def _health(self):
        async def probe():
            await self.behaviour(None)

        return asyncio.ensure_future(probe())

    def remote(self, request):
        self.calls += 1

        async def stream():
            first = await self.behaviour(request)
            yield first
            for batch in getattr(self, "more", []):
                yield batch

        self.replies.append(Replies(stream()))
        return self.replies[-1]


class Replies:
    """A DeploymentResponseGenerator stand-in that records ``cancel()``."""

    def __init__(self, stream):
        self.stream, self.cancelled = stream, False

    def __aiter__(self):
        return self

    def __anext__(self):
        return self.stream.__anext__()

    def cancel(self):
        self.cancelled = True


def ok(text):
    async def run(_):
        return reply(text)

    return run


async def crash(_):
    raise RuntimeError("replica died")


async def hang(_):
    await asyncio.sleep(5)


async def too_long(_):
    return SimpleNamespace(error=SimpleNamespace(code=400, message="max_tokens is too large"))


def router(**behaviours):
    handles = {name: ExpertHandle(behaviours.get(name, ok(name))) for name in ("a", "b", "c")}
    return Dispatcher(ARGS, handles), handles


def complete(ingress, request=REQUEST):
    return asyncio.run(ingress.complete(request))


def test_best_expert_answers():
    ingress, handles = router()
    response, headers = complete(ingress)
    assert response["expert"] == "a" and response["choices"][0]["message"]["content"] == "a"
    assert headers["x-fallbacks"] == "0" and headers["x-routed"] == "true"
    assert handles["b"].calls == 0


@pytest.mark.parametrize("failure", [crash, hang])
def test_a_failed_or_slow_expert_falls_back_to_the_next_in_the_ranking(failure):
    ingress, handles = router(a=failure)
    response, headers = complete(ingress)
    assert response["expert"] == "b" and headers["x-fallbacks"] == "1"


def test_an_expert_left_without_replicas_is_tried_after_every_other_candidate():
    """The policy's first choice lost its node (Serve reports no running replica): the others are
    tried first; if they all fail it still gets its turn (Serve may be placing it again)."""
    ingress, handles = router()
    ingress.lost = {"a"}
    response, _ = complete(ingress)
    assert response["expert"] == "b" and handles["a"].calls == 0
    ingress, handles = router(b=crash, c=crash)
    ingress.lost = {"a"}
    ingress.config = ingress.config.model_copy(
        update={"ingress": ingress.config.ingress.model_copy(update={"max_attempts": 3})}
    )
    response, headers = complete(ingress)
    assert response["expert"] == "a" and headers["x-fallbacks"] == "2"
    assert handles["b"].calls == handles["c"].calls == 1


def test_a_policy_updated_in_place_routes_what_follows_and_a_broken_one_is_refused():
    """``reconfigure`` (Serve's in-place ``user_config`` update) swaps the policy on a running router;
    one that cannot be built leaves the current one routing; an empty one restores args' policy."""
    ingress, handles = router()
    asyncio.run(ingress.reconfigure({"policy": {"name": "fixed", "args": {"expert": "b"}}}))
    response, headers = complete(ingress)
    assert response["expert"] == "b" and json.loads(headers["x-routing-scores"])["b"] == 1.0
    asyncio.run(ingress.reconfigure({"policy": {"name": "knn", "args": {"artifact": "/no/such/router"}}}))
    assert "no/such/router" in ingress.policy_update_error
    assert complete(ingress)[0]["expert"] == "b" and ingress.config.policy.args == {"expert": "b"}
    asyncio.run(ingress.reconfigure({}))
    assert complete(ingress)[0]["expert"] == "a" and ingress.policy_update_error is None


def test_all_attempts_failing_is_a_503():
    ingress, handles = router(a=crash, b=crash)
    with pytest.raises(RoutingError) as info:
        complete(ingress)
    assert api_error(info.value).status == 503 and "replica died" in api_error(info.value).info.message
    assert handles["c"].calls == 0  # max_attempts = 2


def test_a_request_the_engine_refuses_is_a_400_not_a_fallback():
    ingress, handles = router(a=too_long)
    with pytest.raises(RoutingError) as info:
        complete(ingress)
    assert api_error(info.value).status == 400 and "too large" in api_error(info.value).info.message
    assert handles["b"].calls == 0


def test_bypass_calls_only_the_named_expert():
    ingress, handles = router(c=crash)
    bypass = ChatRequest.model_validate({"model": "c", "messages": [{"role": "user", "content": "hi"}]})
    with pytest.raises(RoutingError) as info:
        complete(ingress, bypass)
    assert api_error(info.value).status == 503 and handles["a"].calls == 0


def test_profile_and_defaults_reach_the_expert():
    seen = {}

    async def capture(request):
        seen["request"] = request
        return reply("ok")

    args = {
        **ARGS,
        "experts": [
            {
                "name": "a",
                "model": "m",
                "system_prompt": "PROFILE",
                "sampling": {"max_tokens": 7, "stop": ["X"]},
            },
            {"name": "b", "model": "m"},
            {"name": "c", "model": "m"},
        ],
    }
    ingress = Dispatcher(args, {n: ExpertHandle(capture) for n in "abc"})
    request = ChatRequest.model_validate(
        {
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
            "stop": "Y",
        }
    )
    complete(ingress, request)
    sent = seen["request"]
    assert sent.messages[0] == {"role": "system", "content": "PROFILE\n\nbe brief"}
    assert sent.max_tokens == 7 and sent.stop == ["X", "Y"] and sent.stream is False


def stream_of(*batches):
    async def run(request):
        assert request.stream is True
        return list(batches[0])

    return run


def test_streaming_falls_back_before_the_first_chunk_and_tags_every_chunk():
    chunk = '{"id": "x", "choices": [{"index": 0, "delta": {"content": "hi"}}]}'
    ingress, _ = router(a=crash, b=stream_of([f"data: {chunk}\n\n"]))
    request = ChatRequest.model_validate({"messages": [{"role": "user", "content": "hi"}], "stream": True})

    async def collect():
        events, headers = await ingress.stream(request)
        return "".join([e async for e in events]), headers

    text, headers = asyncio.run(collect())
    assert headers["x-expert"] == "b" and headers["x-fallbacks"] == "1"
    events = [e for e in text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[0][len("data: ") :])["expert"] == "b"


def test_readiness_reports_each_expert():
    ingress, _ = router(b=crash)

    async def readiness():
        return await ingress.expert_readiness(timeout_s=0.2)

    states = asyncio.run(readiness())
    assert states["a"] == states["c"] == "ok"
    assert "replica died" in states["b"]


def test_a_failed_expert_is_skipped_for_the_cooldown_and_all_down_is_a_fast_503():
    ingress, handles = router(a=crash, b=crash)
    with pytest.raises(RoutingError):
        complete(ingress)  # a and b fail: both cool down
    response, headers = complete(ingress)
    assert response["expert"] == "c" and headers["x-fallbacks"] == "0"  # skipped, not called again
    assert handles["a"].calls == handles["b"].calls == 1

    bypass = ChatRequest.model_validate({"model": "a", "messages": [{"role": "user", "content": "hi"}]})
    with pytest.raises(RoutingError) as info:
        complete(ingress, bypass)  # the only candidate is down: 503 at once
    assert (
        api_error(info.value).status == 503
        and "retry in" in api_error(info.value).info.message
        and handles["a"].calls == 1
    )


def test_a_failed_engine_cools_down_with_every_expert_it_serves():
    """b is a LoRA adapter on a's engine: when a fails, the fallback skips b (same engine) for c, and
    both cool down together."""
    args = {
        **ARGS,
        "ingress": {**ARGS["ingress"], "max_attempts": 3},
        "experts": [
            {"name": "a", "model": "builtin:tiny-llama"},
            {"name": "b", "base": "a", "model": "builtin:tiny-llama-lora-a"},
            {"name": "c", "model": "builtin:tiny-llama"},
        ],
    }
    handles = {"a": ExpertHandle(crash), "b": ExpertHandle(ok("b")), "c": ExpertHandle(ok("c"))}
    ingress = Dispatcher(args, handles)
    response, headers = complete(ingress)
    assert response["expert"] == "c" and headers["x-fallbacks"] == "1" and handles["b"].calls == 0
    to_b = ChatRequest.model_validate({"model": "b", "messages": [{"role": "user", "content": "hi"}]})
    with pytest.raises(RoutingError) as info:
        complete(ingress, to_b)  # b's engine is a's: cooling down, a fast 503
    assert api_error(info.value).status == 503 and handles["b"].calls == 0


def test_after_the_cooldown_the_expert_is_tried_again():
    args = {**ARGS, "ingress": {**ARGS["ingress"], "expert_cooldown_s": 0.2}}
    behaviour = {"now": crash}

    async def flaky(request):
        return await behaviour["now"](request)

    handles = {"a": ExpertHandle(flaky), "b": ExpertHandle(ok("b")), "c": ExpertHandle(ok("c"))}
    ingress = Dispatcher(args, handles)
    assert complete(ingress)[0]["expert"] == "b"
    behaviour["now"] = ok("a")  # recovered
    assert complete(ingress)[0]["expert"] == "b"  # still cooling down
    time.sleep(0.25)
    assert complete(ingress)[0]["expert"] == "a" and handles["a"].calls == 2


def test_an_abandoned_expert_call_is_cancelled_on_timeout_and_fallback():
    ingress, handles = router(a=hang)
    response, _ = complete(ingress)
    assert response["expert"] == "b"
    assert handles["a"].replies[0].cancelled  # the timed-out call: its engine stops generating
    assert not handles["b"].replies[0].cancelled


def test_cancelling_a_remote_answer_closes_it():
    """A remote expert's reply stream closes on cancel(), which ends its HTTP request."""
    from deployments.experts.remote import _Replies

    closed = []

    async def endless_answer():
        try:
            while True:
                yield "data: {}\n\n"
        finally:
            closed.append(True)

    async def scenario():
        replies = _Replies(endless_answer())
        await replies.__anext__()
        replies.cancel()
        await asyncio.sleep(0.05)

    asyncio.run(scenario())
    assert closed == [True]


def test_a_stream_the_client_leaves_cancels_the_expert_call():
    chunk = '{"id": "x", "choices": [{"index": 0, "delta": {"content": "hi"}}]}'
    ingress, handles = router(a=stream_of([f"data: {chunk}\n\n"]))
    handles["a"].more = [f"data: {chunk}\n\n"] * 3
    request = ChatRequest.model_validate({"messages": [{"role": "user", "content": "hi"}], "stream": True})

    async def read_one_then_leave(complete_stream: bool):
        events, _ = await ingress.stream(request)
        if complete_stream:
            return [e async for e in events]
        await events.__anext__()
        await events.aclose()  # what Starlette does when the client disconnects

    asyncio.run(read_one_then_leave(False))
    assert handles["a"].replies[-1].cancelled
    assert asyncio.run(read_one_then_leave(True))[-1] == "data: [DONE]\n\n"
    assert not handles["a"].replies[-1].cancelled  # a finished stream is not cancelled


def test_every_refusal_of_the_dispatcher_maps_to_a_status_and_none_is_a_500():
    from deployments import dispatch
    from deployments.ingress import ERRORS

    refusals = [
        kind
        for kind in vars(dispatch).values()
        if isinstance(kind, type)
        and issubclass(kind, dispatch.RoutingError)
        and kind is not dispatch.RoutingError
    ]
    assert set(ERRORS) <= set(refusals)
    made = {kind: kind("m", 1.0) if kind is dispatch.ExpertsOverloaded else kind("m") for kind in refusals}
    statuses = {kind.__name__: api_error(error).status for kind, error in made.items()}  # each one maps
    assert statuses == {
        "InvalidRequest": 400,
        "UnknownModel": 404,
        "UnknownExperts": 400,
        "NoCapableExpert": 400,
        "ExpertsOverloaded": 429,
        "LatencyObjectiveUnmet": 503,
        "ExpertsUnavailable": 503,
    }
