"""The whole OpenAI API through the router, spoken to with the official ``openai`` SDK: tools,
structured outputs, logprobs, ``n``, agent conversations, text completions; routed, bypassed and
through a remote expert, each compared with the same request sent to the expert's own OpenAI server.

The session's cluster: the router app (configs/tiny_cpu.yaml's alpha, which calls tools, and beta,
which does not, plus ``cloud``, a remote expert) and the session's reference server
(``reference_server``: a ``ray.serve.llm.build_openai_app`` of the same tiny engine as alpha, model
``tiny-ref``), which is also the cloud expert's endpoint.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parent.parent
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 12}, "celsius": {"type": "boolean"}},
                "required": ["city", "celsius"],
            },
        },
    }
]
FORCED = {"type": "function", "function": {"name": "get_weather"}}
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"enum": ["yes", "no"]}, "sure": {"type": "boolean"}},
    "required": ["answer", "sure"],
    "additionalProperties": False,
}
AGENT_TURNS = [
    {"role": "system", "content": "You can look up the weather."},
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris", "celsius": true}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'},
]
ASK = [{"role": "user", "content": "Weather in Rome?"}]
SAME = {"max_tokens": 100, "temperature": 0.0}
"""Set on every compared request, so that the router's expert defaults change nothing."""
HERMES_CALL = '<tool_call>{"name":"get_weather","arguments":{"city":"Rome","celsius":true}}</tool_call>'
"""A call as a Hermes-style model writes it (what vLLM's hermes parser reads from the text)."""
REFUSED = {"logprobs": True, "top_logprobs": 50, "max_tokens": 4}
"""Fields every engine here refuses (top_logprobs over vLLM's default max_logprobs of 20)..."""
REFUSAL = "Requested sample logprobs of 50, which is greater than max allowed"
"""...with this message."""
PNG = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
"""A 1x1 PNG."""


@pytest.fixture(scope="module")
def servers(serve_cluster, reference_server):
    from deployments.app import build_app
    from router.config import serve_config_args

    args = serve_config_args(REPO / "configs/tiny_cpu.yaml")
    alpha = next(e for e in args["experts"] if e["name"] == "alpha")
    args["experts"].append(
        {
            "name": "cloud",
            "model": reference_server["model"],
            "endpoint": {"base_url": reference_server["url"]},
            "sampling": alpha["sampling"],
        }
    )
    with serve_cluster.apps("expert-router") as cluster:
        cluster.run(build_app(args), "expert-router", "/")
        router = openai.OpenAI(base_url=f"{cluster.base}/v1", api_key="unused", timeout=120, max_retries=0)
        direct = openai.OpenAI(base_url=reference_server["url"], api_key="unused", timeout=120, max_retries=0)
        deadline = time.monotonic() + 600
        while True:
            try:
                router.chat.completions.create(model="cloud", messages=ASK, max_tokens=1)
                router.chat.completions.create(model="beta", messages=ASK, max_tokens=1)
                break
            except openai.APIError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        yield {"base": cluster.base, "router": router, "direct": direct}


def fields_of(reply) -> dict:
    """A reply as JSON, without what differs between any two replies (ids, times, model names)."""
    body = reply.model_dump(exclude_none=False)
    for key in ("id", "created", "model", "expert", "system_fingerprint"):
        body.pop(key, None)
    for choice in body["choices"]:
        for call in (choice.get("message") or {}).get("tool_calls") or []:
            call.pop("id")
    return body


def same_as_direct(reply, direct) -> None:
    """Field for field what the expert's own server answered (tool call ids aside)."""
    assert fields_of(reply) == fields_of(direct)


def answered(servers) -> int:
    """Requests the router's experts have answered so far (its one replica's /status)."""
    experts = httpx.get(f"{servers['base']}/status", timeout=30).json()["load"]["experts"]
    return sum(expert["answered"] for expert in experts.values())


def tool_arguments(reply) -> object:
    """The arguments of the reply's one tool call, which must parse as JSON (vLLM's structured
    decoding of a forced call; what a random model puts in them is noise, e.g. ``null``)."""
    [call] = reply.choices[0].message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    return json.loads(call.function.arguments)


@pytest.mark.parametrize("model", ["router", "alpha", "cloud"])
def test_a_forced_tool_call_is_answered_as_the_experts_own_server_answers(servers, model):
    """Routed (to alpha or cloud: the same engine as the reference), bypassed and remote."""
    request = {"messages": ASK, "tools": TOOLS, "tool_choice": FORCED, **SAME}
    reply = servers["router"].chat.completions.create(model=model, **request)
    direct = servers["direct"].chat.completions.create(model="tiny-ref", **request)
    assert reply.expert in {"alpha", "cloud"} if model == "router" else reply.expert == model
    tool_arguments(reply)
    same_as_direct(reply, direct)


@pytest.mark.parametrize("model", ["router", "alpha"])
def test_required_tool_choice_calls_a_tool(servers, model):
    """tool_choice="required": vLLM's structured decoding makes the model write a call (one, without
    parallel calls; its arguments are any JSON), so the reply is a call with finish_reason
    "tool_calls", as the expert's own server answers."""
    request = {
        "messages": ASK,
        "tools": TOOLS,
        "tool_choice": "required",
        "parallel_tool_calls": False,
        **SAME,
    }
    reply = servers["router"].chat.completions.create(model=model, **request)
    assert reply.choices[0].finish_reason == "tool_calls" and reply.expert in {"alpha", "cloud"}
    tool_arguments(reply)
    same_as_direct(reply, servers["direct"].chat.completions.create(model="tiny-ref", **request))


@pytest.mark.parametrize("model", ["router", "alpha"])
def test_auto_tool_choice_returns_the_call_the_model_writes(servers, model):
    """tool_choice="auto": the expert's hermes parser reads a call from the text the model writes.
    A random model never writes one by itself, so structured outputs make it write one."""
    reply = servers["router"].chat.completions.create(
        model=model,
        messages=ASK,
        tools=TOOLS,
        tool_choice="auto",
        extra_body={"structured_outputs": {"choice": [HERMES_CALL]}},
        **SAME,
    )
    assert reply.choices[0].finish_reason == "tool_calls" and reply.expert in {"alpha", "cloud"}
    assert tool_arguments(reply) == {"city": "Rome", "celsius": True}


def test_the_readme_auto_example_answers_as_the_experts_own_server(servers):
    """The README's example as is. Whether a random model writes a call is up to its weights (it
    practically never writes `<tool_call>`): a valid reply either way, the expert's own server's."""
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
    request = {"messages": ASK, "tools": [weather], "tool_choice": "auto", **SAME}
    reply = servers["router"].chat.completions.create(model="alpha", **request)
    choice = reply.choices[0]
    assert (choice.finish_reason == "tool_calls") == bool(choice.message.tool_calls)
    assert choice.message.tool_calls or choice.message.content is not None
    same_as_direct(reply, servers["direct"].chat.completions.create(model="tiny-ref", **request))


def test_routed_tool_calls_go_only_to_experts_that_call_tools(servers):
    seen = set()
    for _ in range(8):
        reply = servers["router"].chat.completions.create(
            model="router", messages=ASK, tools=TOOLS, tool_choice=FORCED, **SAME
        )
        tool_arguments(reply)
        seen.add(reply.expert)
    assert seen <= {"alpha", "cloud"} and seen  # never beta, which has no tool-call parser
    plain = {
        servers["router"].chat.completions.create(model="router", messages=ASK).expert for _ in range(12)
    }
    assert "beta" in plain  # which the policy does pick for requests without tools


def test_a_tool_request_no_candidate_can_answer_is_a_400_naming_the_capability(servers):
    for model, extra in (("beta", {}), ("router", {"extra_body": {"routing": {"experts": ["beta"]}}})):
        with pytest.raises(openai.BadRequestError) as info:
            servers["router"].chat.completions.create(
                model=model, messages=ASK, tools=TOOLS, tool_choice=FORCED, **extra
            )
        error = info.value.body
        assert error["code"] == "capability_unsupported" and "needs tools" in error["message"]


@pytest.mark.parametrize("model", ["router", "alpha"])
def test_a_streamed_tool_call_arrives_as_tool_call_deltas(servers, model):
    def collect(client, name):
        arguments, names, experts, finish = "", set(), set(), None
        for chunk in client.chat.completions.create(
            model=name, messages=ASK, tools=TOOLS, tool_choice=FORCED, stream=True, **SAME
        ):
            experts.add(getattr(chunk, "expert", None))
            for choice in chunk.choices:
                for call in choice.delta.tool_calls or []:
                    names.add(call.function.name)
                    arguments += call.function.arguments or ""
                finish = choice.finish_reason or finish
        return arguments, names - {None}, experts, finish

    arguments, names, experts, finish = collect(servers["router"], model)
    assert names == {"get_weather"} and len(experts) == 1 and experts <= {"alpha", "cloud"}
    json.loads(arguments)
    direct_arguments, _, _, direct_finish = collect(servers["direct"], "tiny-ref")
    assert (arguments, finish) == (direct_arguments, direct_finish)


@pytest.mark.parametrize("model", ["router", "beta", "cloud"])
def test_a_json_schema_response_format_gives_content_that_validates(servers, model):
    response_format = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": SCHEMA}}
    reply = servers["router"].chat.completions.create(
        model=model, messages=ASK, response_format=response_format, **SAME
    )
    jsonschema.validate(json.loads(reply.choices[0].message.content), SCHEMA)
    stream = servers["router"].chat.completions.create(
        model=model, messages=ASK, response_format=response_format, stream=True, **SAME
    )
    jsonschema.validate(
        json.loads("".join(c.choices[0].delta.content or "" for c in stream if c.choices)), SCHEMA
    )
    if model == "cloud":
        direct = servers["direct"].chat.completions.create(
            model="tiny-ref", messages=ASK, response_format=response_format, **SAME
        )
        same_as_direct(reply, direct)


def test_logprobs_and_n_choices_come_back_whole(servers):
    request = {
        "messages": ASK,
        "logprobs": True,
        "top_logprobs": 3,
        "n": 2,
        "seed": 3,
        **SAME,
        "temperature": 0.8,
    }
    reply = servers["router"].chat.completions.create(model="alpha", **request)
    assert [c.index for c in reply.choices] == [0, 1]
    for choice in reply.choices:
        assert choice.logprobs.content and all(len(t.top_logprobs) == 3 for t in choice.logprobs.content)
    routed = servers["router"].chat.completions.create(model="router", **request)
    assert len(routed.choices) == 2 and routed.choices[1].logprobs.content
    assert routed.usage.completion_tokens == sum(len(c.logprobs.content) for c in routed.choices)
    direct = servers["direct"].chat.completions.create(model="tiny-ref", **request)
    same_as_direct(reply, direct)


@pytest.mark.parametrize("model", ["router", "cloud"])
def test_logprobs_stream_with_the_tokens(servers, model):
    def tokens(client, name):
        chunks = client.chat.completions.create(
            model=name, messages=ASK, logprobs=True, top_logprobs=2, stream=True, max_tokens=8, temperature=0
        )
        return [
            t
            for c in chunks
            for choice in c.choices
            if choice.logprobs
            for t in choice.logprobs.content or []
        ]

    streamed = tokens(servers["router"], model)
    assert streamed and all(len(t.top_logprobs) == 2 for t in streamed)
    if model == "cloud":  # the remote expert's stream passes through whole
        assert [t.token for t in streamed] == [t.token for t in tokens(servers["direct"], "tiny-ref")]


def test_n_choices_stream_with_their_indexes(servers):
    indexes = set()
    for chunk in servers["router"].chat.completions.create(
        model="router", messages=ASK, n=2, stream=True, max_tokens=8, temperature=0.8
    ):
        indexes |= {c.index for c in chunk.choices}
    assert indexes == {0, 1}


@pytest.mark.parametrize("model", ["router", "alpha", "cloud"])
def test_an_agent_conversation_with_tool_results_is_answered(servers, model):
    reply = servers["router"].chat.completions.create(model=model, messages=AGENT_TURNS, tools=TOOLS, **SAME)
    assert reply.choices[0].message.role == "assistant" and reply.usage.prompt_tokens > 0
    if model == "alpha":
        direct = servers["direct"].chat.completions.create(
            model="tiny-ref", messages=AGENT_TURNS, tools=TOOLS, **SAME
        )
        same_as_direct(reply, direct)


@pytest.mark.parametrize("model", ["router", "alpha"])
def test_a_streamed_agent_conversation_is_answered_as_the_experts_own_server_answers(servers, model):
    def collect(client, name):
        text, calls, finish, experts = "", [], None, set()
        for chunk in client.chat.completions.create(
            model=name, messages=AGENT_TURNS, tools=TOOLS, stream=True, **SAME
        ):
            experts.add(getattr(chunk, "expert", None))
            for choice in chunk.choices:
                text += choice.delta.content or ""
                calls += [call.function.name for call in choice.delta.tool_calls or [] if call.function.name]
                finish = choice.finish_reason or finish
        return (text, calls, finish), experts

    answer, experts = collect(servers["router"], model)
    assert answer[2] is not None and len(experts) == 1 and experts <= {"alpha", "cloud"}
    assert answer == collect(servers["direct"], "tiny-ref")[0]


def test_usage_chunks_only_for_clients_that_ask(servers):
    def chunks(**extra):
        return list(
            servers["router"].chat.completions.create(model="router", messages=ASK, stream=True, **extra)
        )

    assert all(c.choices and c.usage is None for c in chunks())
    last = chunks(stream_options={"include_usage": True})[-1]
    assert last.choices == [] and last.usage.completion_tokens > 0


@pytest.mark.parametrize("model", ["alpha", "cloud"])
def test_a_field_the_engine_refuses_is_its_400_not_a_fallback(servers, model):
    with pytest.raises(openai.BadRequestError) as info:
        servers["router"].chat.completions.create(model=model, messages=ASK, **REFUSED)
    with pytest.raises(openai.BadRequestError) as direct:
        servers["direct"].chat.completions.create(model="tiny-ref", messages=ASK, **REFUSED)
    assert info.value.body["type"] == "invalid_request_error"
    for error in (info.value.body, direct.value.body):
        assert REFUSAL in error["message"]


@pytest.mark.parametrize(
    "model, stream", [("router", False), ("router", True), ("alpha", True), ("cloud", True)]
)
def test_a_refused_field_is_the_engines_400_before_any_answer_or_stream(servers, model, stream):
    """Routed: the first expert's refusal is the reply; the next in the ranking, which would answer
    200, is not asked (no expert answered). Streamed: a 400, not a 200 stream with an error event."""
    before = answered(servers)
    body = {"model": model, "messages": ASK, **REFUSED, "stream": stream}
    reply = httpx.post(f"{servers['base']}/v1/chat/completions", json=body, timeout=120)
    assert reply.status_code == 400 and reply.headers["content-type"] == "application/json", reply.text
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and REFUSAL in error["message"]
    assert "x-expert" not in reply.headers and answered(servers) == before


@pytest.mark.parametrize(
    "parameters, says", [([], "tools[0].function"), ({"type": 5}, "not a valid JSON schema")]
)
def test_a_malformed_tool_schema_is_a_400(servers, parameters, says):
    tools = [{"type": "function", "function": {"name": "f", "parameters": parameters}}]
    with pytest.raises(openai.BadRequestError) as info:
        servers["router"].chat.completions.create(model="alpha", messages=ASK, tools=tools)
    assert says in info.value.body["message"]


def test_media_parts_go_to_a_named_expert_whose_engine_answers(servers):
    """Routed, a request with an image is ranked among vision experts (none here: 400 naming the
    capability); naming an expert sends it there, and its text-only engine says why not."""
    image = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": PNG}},
            ],
        }
    ]
    with pytest.raises(openai.BadRequestError) as routed:
        servers["router"].chat.completions.create(model="router", messages=image)
    assert (
        routed.value.body["code"] == "capability_unsupported"
        and "needs vision" in routed.value.body["message"]
    )
    for client, model in ((servers["router"], "alpha"), (servers["direct"], "tiny-ref")):
        with pytest.raises(openai.BadRequestError) as named:
            client.chat.completions.create(model=model, messages=image, max_tokens=4)
        assert named.value.body.get("code") != "capability_unsupported"
        assert f"{model} is not a multimodal model" in named.value.body["message"]


def test_a_named_expert_takes_a_conversation_without_a_user_turn(servers):
    """Routing reads the user's words, so a routed request needs them; an expert named directly gets
    the conversation as it is."""
    system_only = [{"role": "system", "content": "Tell a story."}]
    reply = servers["router"].chat.completions.create(model="alpha", messages=system_only, **SAME)
    same_as_direct(
        reply, servers["direct"].chat.completions.create(model="tiny-ref", messages=system_only, **SAME)
    )
    with pytest.raises(openai.BadRequestError) as info:
        servers["router"].chat.completions.create(model="router", messages=system_only)
    assert "non-empty user message" in info.value.body["message"]


@pytest.mark.parametrize("model", ["router", "beta", "cloud"])
def test_text_completions_are_routed_on_the_prompt(servers, model):
    client = servers["router"]
    reply = client.completions.create(model=model, prompt="Once upon a time", max_tokens=8, temperature=0)
    assert reply.object == "text_completion" and reply.choices[0].text and reply.usage.completion_tokens > 0
    assert reply.expert in {"alpha", "beta", "cloud"} if model == "router" else reply.expert == model
    direct = servers["direct"].completions.create(
        model="tiny-ref", prompt="Once upon a time", max_tokens=8, temperature=0
    )
    assert reply.choices[0].text == direct.choices[0].text  # the same weights, no profile added
    text = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=model, prompt="Once upon a time", max_tokens=8, temperature=0, stream=True
        )
        if c.choices
    )
    assert text == direct.choices[0].text


def test_the_responses_api_says_why_it_is_not_served(servers):
    reply = httpx.post(f"{servers['base']}/v1/responses", json={"model": "router", "input": "hi"}, timeout=30)
    assert reply.status_code == 404
    assert "ray.serve.llm" in reply.json()["error"]["message"]


def test_predict_keeps_the_seed_shape_with_the_new_fields(servers):
    reply = httpx.post(
        f"{servers['base']}/predict",
        json={"messages": ASK, "tools": TOOLS, "tool_choice": FORCED, **SAME},
        timeout=120,
    )
    body = reply.json()
    assert set(body) == {"id", "object", "created", "choices", "usage", "expert"}
    assert body["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
