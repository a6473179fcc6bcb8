"""Request and response models of the HTTP API."""

import pytest
from pydantic import ValidationError

from router.schemas import AssistantMessage, ChatRequest, ChatResponse, Choice, Usage


def test_seed_request_parses_with_routing_defaults():
    req = ChatRequest.model_validate({"messages": [{"role": "user", "content": "Test"}]})
    assert req.model == "router" and req.n == 1 and req.sampling_overrides() == {}


def test_openai_extras_are_ignored_and_overrides_collected():
    req = ChatRequest.model_validate(
        {
            "model": "math",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "2+2?"}]},
            ],
            "max_tokens": 5,
            "temperature": 0.5,
            "stop": "\n",
            "user": "someone",
            "frequency_penalty": 0,
        }
    )
    assert req.messages[1].text == "2+2?"
    assert req.sampling_overrides() == {"max_tokens": 5, "temperature": 0.5, "stop": ["\n"]}


def test_max_completion_tokens_wins():
    req = ChatRequest.model_validate(
        {"messages": [{"role": "user", "content": "x"}], "max_tokens": 5, "max_completion_tokens": 7}
    )
    assert req.token_limit == 7


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"messages": []},
        {"messages": [{"role": "wizard", "content": "x"}]},
        {"messages": [{"role": "user"}]},
        {"messages": [{"role": "system", "content": "only a system turn"}]},
        {"messages": [{"role": "user", "content": "   "}]},
        {"messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
        {"messages": [{"role": "user", "content": "x"}], "temperature": 9},
        {"messages": [{"role": "user", "content": "x"}], "n": 2},
        {"messages": "not a list"},
    ],
)
def test_bad_requests_are_rejected(body):
    with pytest.raises(ValidationError):
        ChatRequest.model_validate(body)


def test_response_has_the_seed_shape():
    resp = ChatResponse(
        model="math",
        expert="math",
        choices=[Choice(message=AssistantMessage(content="4"))],
        usage=Usage(prompt_tokens=3, completion_tokens=1, total_tokens=4),
    ).model_dump()
    assert resp["object"] == "chat.completion" and resp["id"].startswith("chatcmpl-")
    assert resp["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "4"}, "finish_reason": "stop"}
    ]
    assert set(resp["usage"]) == {"prompt_tokens", "total_tokens", "completion_tokens"}
    assert resp["expert"] == "math"
