"""The router's OpenAI request models: ray.serve.llm's (vLLM's) requests plus the router's layer."""

import pickle

import pytest
from pydantic import ValidationError

from deployments.dispatch import expert_request, with_profile
from deployments.experts.vllm import LocalExpert
from deployments.openai_api import ChatRequest, TextCompletionRequest
from router.config import SecurityConfig, field_path
from tests.wrong_types import CHAT_BASES, COMPLETION_BASES, names_the_field, wrong_typed

TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
AGENT_TURNS = [
    {"role": "developer", "content": "Use the tools."},
    {"role": "user", "content": [{"type": "text", "text": "What is 2+3?"}]},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a":2}'}}],
    },
    {"role": "tool", "tool_call_id": "c1", "content": '{"result": 5, "huge": "json blob"}'},
]
EXPERT = LocalExpert(
    name="math",
    model="m",
    system_prompt="PROFILE",
    sampling={"max_tokens": 7, "temperature": 0.3, "stop": ["X"]},
)


def test_the_seed_request_routes_with_defaults():
    request = ChatRequest.model_validate({"messages": [{"role": "user", "content": "Test"}]})
    assert request.model == "router" and request.n == 1 and request.routing is None
    assert request.needs() == set()


def test_every_field_the_client_sets_reaches_the_expert_and_routing_does_not():
    body = {
        "messages": AGENT_TURNS,
        "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "add"}},
        "parallel_tool_calls": False,
        "logprobs": True,
        "top_logprobs": 2,
        "n": 2,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.1,
        "logit_bias": {"5": -100},
        "seed": 7,
        "user": "someone",
        "max_completion_tokens": 20,
        "stop": "Y",
        "top_k": 5,  # a vLLM extra
        "routing": {"explain": True},
    }
    request = ChatRequest.model_validate(body)
    sent = expert_request(EXPERT, request)
    fields, original = sent.model_dump(exclude_unset=True), request.model_dump(exclude_unset=True)
    assert "routing" not in fields and fields["model"] == "math"
    for key in ("tools", "logprobs", "top_logprobs", "n", "presence_penalty", "logit_bias", "seed", "top_k"):
        assert fields[key] == original[key], key
    assert sent.tool_choice.function.name == "add" and sent.parallel_tool_calls is False
    assert fields["max_completion_tokens"] == 20 and "max_tokens" not in fields  # the client's limit
    assert fields["temperature"] == 0.3 and fields["stop"] == ["X", "Y"]  # expert default, stops combined
    # Every role passes, the profile merged into the first (developer) turn, tool turns untouched.
    assert [m["role"] for m in sent.messages] == ["developer", "user", "assistant", "tool"]
    assert sent.messages[0]["content"] == "PROFILE\n\nUse the tools."
    assert sent.messages[2]["content"] is None and sent.messages[2]["tool_calls"][0]["id"] == "c1"


def test_a_json_schema_survives_the_trip_to_the_expert():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    response_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    request = ChatRequest.model_validate(
        {"messages": [{"role": "user", "content": "x"}], "response_format": response_format}
    )
    sent = expert_request(EXPERT, request)
    assert sent.response_format.json_schema.json_schema == schema  # vLLM's field, aliased "schema"
    assert sent.model_dump(mode="json", by_alias=True)["response_format"] == response_format | {
        "json_schema": {**response_format["json_schema"], "description": None, "strict": None}
    }


def test_profiles_merge_into_system_turns_of_any_shape():
    parts = [{"type": "text", "text": "be brief"}]
    assert with_profile("P", [{"role": "system", "content": parts}])[0]["content"][0]["text"] == "P\n\n"
    assert with_profile("P", [{"role": "user", "content": "hi"}])[0] == {"role": "system", "content": "P"}
    assert with_profile(None, AGENT_TURNS) == AGENT_TURNS


def test_routing_reads_the_users_words_not_tool_json():
    request = ChatRequest.model_validate({"messages": AGENT_TURNS, "tools": TOOLS})
    texts = {m.role: m.content for m in request.routing_messages()}
    assert texts["user"] == "What is 2+3?" and texts["tool"] == "" and texts["assistant"] == ""


@pytest.mark.parametrize(
    "extra, needs",
    [
        ({"tools": TOOLS}, {"tools"}),
        ({"tools": TOOLS, "tool_choice": "none"}, set()),
        ({"response_format": {"type": "json_object"}}, {"json_schema"}),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}},
            {"json_schema"},
        ),
        ({"response_format": {"type": "text"}}, set()),
        ({"structured_outputs": {"choice": ["a", "b"]}}, {"json_schema"}),
    ],
)
def test_a_request_names_the_capabilities_it_needs(extra, needs):
    request = ChatRequest.model_validate({"messages": [{"role": "user", "content": "x"}], **extra})
    assert request.needs() == needs


def test_media_parts_need_vision_or_audio_when_routed():
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    body = {"messages": [{"role": "user", "content": [image, audio]}], "tools": TOOLS}
    request = ChatRequest.model_validate(body)
    assert request.needs() == {"vision", "audio", "tools"} and request.routing_messages()[0].content == ""
    # Named, the expert gets the parts and its engine says what it cannot take; tools still count.
    assert ChatRequest.model_validate({**body, "model": "math"}).needs() == {"tools"}


def test_a_named_expert_needs_no_user_turn():
    system_only = {"messages": [{"role": "system", "content": "Tell a story."}]}
    assert ChatRequest.model_validate({**system_only, "model": "math"}).routed is False
    with pytest.raises(ValidationError, match="non-empty user message"):
        ChatRequest.model_validate(system_only)


def test_streams_always_report_usage_to_the_router():
    request = ChatRequest.model_validate({"messages": [{"role": "user", "content": "x"}], "stream": True})
    assert not request.wants_usage_chunk()
    assert expert_request(EXPERT, request).stream_options.include_usage


@pytest.mark.parametrize(
    "body, where",
    [
        ({}, "messages"),
        ({"messages": []}, "at least one message"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "wizard"),
        ({"messages": [{"role": []}]}, "messages[0].role: []"),  # found by the schemathesis fuzz test
        ({"messages": [{"role": {"a": 1}, "content": "x"}]}, "is not one of"),
        ({"messages": [{"role": "user"}]}, "non-empty user message"),
        ({"messages": [{"role": "system", "content": "only a system turn"}]}, "non-empty user message"),
        ({"messages": [{"role": "user", "content": "   "}]}, "non-empty user message"),
        ({"messages": [{"role": "user", "content": []}]}, "non-empty user message"),
        ({"messages": [{"role": "user", "content": "\ud800"}]}, "not valid Unicode"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "greater than or equal to 1"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": 9}, "less than or equal to 2"),
        ({"messages": [{"role": "user", "content": "x"}], "n": 0}, "greater than or equal to 1"),
        ({"messages": "not a list"}, "valid list"),
        ({"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}, "`tools` must be set"),
        ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "function"),
        (
            {
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}],
            },
            "tools[0].function.parameters: not a valid JSON schema",
        ),
        (
            {
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {"pattern": "("}}}],
            },
            "not a valid JSON schema",
        ),
        ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "`logprobs` must be set"),
        ({"messages": [{"role": "user", "content": "x"}], "routing": {"bogus": 1}}, "Extra inputs"),
    ],
)
def test_bad_requests_are_rejected_with_the_reason(body, where):
    """Each problem as the HTTP error says it: ``place: reason``."""
    with pytest.raises(ValidationError) as info:
        ChatRequest.model_validate(body)
    problems = [f"{field_path(err['loc'], body)}: {err['msg']}" for err in info.value.errors()]
    assert where in "; ".join(problems)


def test_text_completions_route_on_the_prompt_and_get_the_expert_defaults():
    request = TextCompletionRequest.model_validate({"prompt": ["Once upon", "a time"], "echo": True})
    assert request.routing_messages()[0].content == "Once upon\na time"
    sent = expert_request(EXPERT, request)
    assert (
        sent.model == "math"
        and sent.echo is True
        and sent.max_tokens == 7
        and sent.prompt == ["Once upon", "a time"]
    )
    with pytest.raises(ValidationError, match="routing reads the prompt's text"):
        TextCompletionRequest.model_validate({"prompt": [1, 2, 3]})
    assert TextCompletionRequest.model_validate({"prompt": [1, 2, 3], "model": "math"}).texts() == []


def test_parsed_messages_are_plain_lists_that_pickle():
    """Pydantic keeps some iterables (an empty parts list) as one-shot iterators that do not pickle:
    the request holds lists, so it crosses to the expert's replica."""
    request = ChatRequest.model_validate({"messages": [{"role": "system", "content": []}, *AGENT_TURNS]})
    assert all(m.get("content") is None or isinstance(m["content"], (str, list)) for m in request.messages)
    sent = pickle.loads(pickle.dumps(expert_request(EXPERT, request)))
    assert sent.messages[0]["content"] == [{"type": "text", "text": "PROFILE\n\n"}]


@pytest.mark.parametrize("profile", ["PROFILE", None])
def test_the_expert_request_holds_lists_too(profile):
    """Building the engine's request validates the messages again, which made new one-shot iterators
    (a tool result with an empty parts list gave a 500 to a fuzzed request): they are read too."""
    tool_result = {"role": "tool", "tool_call_id": "c1", "content": []}
    request = ChatRequest.model_validate({"messages": [*AGENT_TURNS, tool_result]})
    expert = EXPERT.model_copy(update={"system_prompt": profile})
    sent = pickle.loads(pickle.dumps(expert_request(expert, request)))
    assert sent.messages[1:] == [*AGENT_TURNS[1:], tool_result]


def read_as_the_router_does(request: ChatRequest | TextCompletionRequest) -> None:
    """Everything the router reads of an accepted request has the type it expects, and the request
    an expert gets is built and crosses to its replica."""
    assert (
        isinstance(request.model, str)
        and isinstance(request.n, int)
        and request.stream in (None, False, True)
    )
    assert request.token_limit is None or isinstance(request.token_limit, int)
    assert all(isinstance(text, str) for text in request.texts())
    assert all(isinstance(m.content, str) for m in request.routing_messages())
    assert isinstance(request.needs(), set) and isinstance(request.structured(), bool)
    assert isinstance(request.wants_usage_chunk(), bool)
    pickle.dumps(expert_request(EXPERT, request))


@pytest.mark.parametrize(
    "model, bases", [(ChatRequest, CHAT_BASES), (TextCompletionRequest, COMPLETION_BASES)]
)
def test_every_field_of_every_json_type_is_accepted_or_a_validation_error_naming_it(model, bases):
    """Each field the model declares (so new ones too) x each JSON type, in routed, bypassed-streamed
    (and tool-calling) bodies: the request is valid and the router can read it, or validation
    raises a ValidationError whose first error (the HTTP error's ``param``) names that field (or,
    when the value is null, i.e. the field unset, a field of the base that needs it). Found before:
    TypeError from ``messages: 5``, AttributeError from ``structured_outputs: 5``."""
    failures, cases = [], 0
    for key, value, body in wrong_typed(model, bases):
        cases += 1
        try:
            read_as_the_router_does(model.model_validate(body))
        except ValidationError as exc:
            where = field_path(exc.errors()[0]["loc"], body)
            needed = value is None and any(names_the_field(where, other) for other in body)
            if not (names_the_field(where, key) or needed):
                failures.append(f"{key}={value!r}: error at {where!r}: {exc.errors()[0]['msg']}")
        except Exception as exc:
            failures.append(f"{key}={value!r}: {type(exc).__name__}: {exc}")
    assert not failures, f"{len(failures)} of {cases} bodies:\n" + "\n".join(failures[:40])


def test_the_caps_name_the_field_the_client_set():
    """A text completion's extra ``max_completion_tokens`` is not read; its size caps name ``prompt``."""
    limits = SecurityConfig(max_tokens=10, max_message_chars=5)
    chat = ChatRequest.model_validate(
        {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 20}
    )
    assert chat.over_limits(limits) == [("max_completion_tokens", "max_completion_tokens 20; at most 10")]
    text = TextCompletionRequest.model_validate(
        {"prompt": "longer", "max_tokens": 3, "max_completion_tokens": "x"}
    )
    assert text.token_limit == 3 and text.over_limits(limits) == [
        ("prompt", "a message has 6 characters; at most 5")
    ]
