"""The router's HTTP API models. Requests are ray.serve.llm's own (vLLM's) chat and text
completion requests, so every field an expert's engine accepts passes through, plus a thin layer
for what the router owns: the ``routing`` extension (:class:`RoutingOptions`), ``model`` defaulting
to ``"router"``, early 400s for values no engine takes, the text a policy routes on and the
capabilities a request needs. Replies are the expert's whole response plus ``expert`` (and
:class:`RoutingInfo`); also the model list and OpenAI-style errors."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from functools import cache
from typing import Annotated, Any, ClassVar, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest
from vllm.exceptions import VLLMValidationError

from router.config import ROUTER_MODEL_NAME, SamplingDefaults, SecurityConfig
from router.policy import Message

ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
"""The roles of OpenAI's chat messages."""
PART_NEEDS = {
    "image_url": "vision",
    "image_embeds": "vision",
    "image_pil": "vision",
    "video_url": "vision",
    "input_audio": "audio",
    "audio_url": "audio",
}
"""Capability a content part of this type needs of the expert (checked when the router chooses: a
request naming an expert goes to it, and its engine refuses parts it cannot take)."""
STRUCTURED_FORMATS = {"json_object", "json_schema", "structural_tag"}
logger = logging.getLogger("ray.serve")

Loc = tuple[str | int, ...]


class RoutingOptions(BaseModel):
    """Per-request routing controls (OpenAI clients send them with ``extra_body={"routing": ...}``)."""

    model_config = ConfigDict(extra="forbid")
    cost_weight: float | None = Field(None, ge=0, description="Trade quality for price (0: quality only).")
    experts: list[str] | None = Field(None, min_length=1, description="Route only among these experts.")
    explain: bool = Field(False, description="Add a 'routing' field: expert, scores, routing ms, cost.")
    load_weight: float | None = Field(
        None, ge=0, description="Override ingress.load.load_weight (0: ignore load)."
    )
    max_ttft_ms: float | None = Field(
        None, gt=0, description="Pass over experts whose expected time to first token exceeds this."
    )
    strict_latency: bool = Field(False, description="With max_ttft_ms: 503 when no candidate meets it.")


class RoutingInfo(BaseModel):
    """Why this expert answered (``routing.explain``)."""

    expert: str
    routed: bool
    scores: dict[str, float | None]
    routing_ms: float
    fallbacks: list[str]
    cost_usd: float | None = None
    shed: bool = Field(False, description="Overload: the policy did not decide in time (see shed_tier)")
    shed_tier: Literal["fast", "prior"] | None = Field(
        None,
        description="Who decided a shed request: 'fast', the per-query tier learned from the policy's "
        "decisions, or 'prior', the recent average of its scores (before the fast tier is ready)",
    )
    note: str | None = Field(
        None, description="Why the policy ranked as it did beyond its scores (e.g. the default expert)"
    )
    load: dict[str, Any] | None = Field(
        None,
        description="Load-aware routing: the policy's own choice, whether load changed it, expected "
        "waits (ms), experts passed over for max_ttft_ms or spilled at their max_in_flight",
    )


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "expert-router"
    description: str = ""
    price: dict[str, float] | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """OpenAI-style error JSON."""

    error: ErrorInfo


def invalid(problems: list[tuple[Loc, str, Any]]) -> ValidationError:
    """A validation error with one ``(where, message, value)`` line per problem. Raised inside a
    validator, its places are kept (under the field's own place when nested), so the HTTP layer
    names the field in the error's ``param``."""
    return ValidationError.from_exception_data(
        "request",
        [
            InitErrorDetails(
                type=PydanticCustomError("value_error", "{reason}", {"reason": msg}), loc=loc, input=value
            )
            for loc, msg, value in problems
        ],
    )


def _json_type(value: Any) -> str:
    """The JSON type of a parsed value, as a client would name it."""
    for python, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string")):
        if isinstance(value, python):
            return name
    return {dict: "object", list: "array", type(None): "null"}.get(type(value), type(value).__name__)


def _read_iterators(value: Any) -> Any:
    """``value`` with every one-shot iterator in it, at any depth, read into a list. Pydantic keeps an
    ``Iterable`` field of OpenAI's message types (e.g. an empty parts list) as a ValidatorIterator:
    unpicklable, so it cannot cross to an expert's replica, and validated only as it is read."""
    if isinstance(value, dict):
        return {key: _read_iterators(item) for key, item in value.items()}
    if isinstance(value, (list, Iterator)):
        return [_read_iterators(item) for item in value]
    return value


def _encodable(text: str, where: Loc) -> None:
    """Text an engine can tokenize: valid Unicode (JSON may smuggle in lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        message = f"text is not valid Unicode ({exc.reason} at position {exc.start})"
        raise invalid([(where, message, text)]) from None


def content_text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a content list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text")


class RouterFields(BaseModel):
    """What the router adds to an OpenAI request, and the checks it makes before any engine does."""

    model_config = ConfigDict(extra="allow")
    engine_request: ClassVar[type[BaseModel]]
    """The ray.serve.llm request model an expert's LLMServer takes..."""
    call_method: ClassVar[str]
    """...in this method."""
    text_field: ClassVar[str]
    """The field whose text routing reads (and the size caps count)."""

    model: str = Field(ROUTER_MODEL_NAME, description="'router' routes; an expert's name bypasses routing.")
    routing: RoutingOptions | None = Field(None, description="Routing controls (expert-router extension).")
    n: int = Field(1, ge=1, description="Choices to generate.")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)

    @model_validator(mode="wrap")
    @classmethod
    def _only_validation_errors(cls, data: Any, handler: Any) -> Any:
        """Whatever the body holds, validation raises validation errors, each at the field it
        concerns. vLLM's checks name theirs in ``VLLMValidationError.parameter``; its validators
        that assume a field's shape (``'int' object is not iterable``) are answered by validating
        each field the client sent on its own, else by finding the field whose removal cures it."""
        sent = dict(data) if isinstance(data, dict) else data  # vLLM's validators add keys in place
        try:
            return handler(data)
        except ValidationError as exc:
            errors = exc.errors()
            if all(err["loc"] for err in errors):
                raise
            blame = _Blame(cls, sent, handler)
            problems = [(err["loc"] or blame(_cause(err)), _message(err), err["input"]) for err in errors]
        except VLLMValidationError as exc:  # vLLM's checks; some escape pydantic's conversion
            problems = [(_Blame(cls, sent, handler)(exc), _vllm_message(exc), exc.value)]
        except Exception as exc:  # a validator assumed a shape the client did not send
            logger.info("request validation raised %s: %s", type(exc).__name__, str(exc)[:200])
            where = _Blame(cls, sent, handler)(exc)
            value = sent.get(where[0]) if where and isinstance(sent, dict) else sent
            found = _field_errors(cls, where[0], value) if where and isinstance(where[0], str) else []
            problems = found or [(where, f"this {_json_type(value)} is not a valid value here", value)]
        raise invalid(problems)

    def for_expert(self, model: str, sampling: SamplingDefaults, **changes: Any) -> Any:
        """The request as an expert's LLMServer gets it: everything the client sent but ``routing``,
        with ``model`` = the expert's id, the expert's sampling defaults where the client set nothing
        (stop strings combined), and ``changes``."""
        body = self.model_dump(exclude_unset=True, exclude={"routing"}, by_alias=True)
        if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
            body["max_tokens"] = sampling.max_tokens
        for key in ("temperature", "top_p"):
            if body.get(key) is None:
                body[key] = getattr(sampling, key)
        client_stop = body.get("stop") or []
        stop = [*sampling.stop, *([client_stop] if isinstance(client_stop, str) else client_stop)]
        if stop:
            body["stop"] = list(dict.fromkeys(stop))
        request = self.engine_request.model_validate({**body, **changes, "model": model})
        if isinstance(messages := getattr(request, "messages", None), list):
            request.messages = _read_iterators(messages)  # validating again made iterators again
        return request

    @property
    def routed(self) -> bool:
        """Whether the router chooses the expert (else the client named one)."""
        return self.model == ROUTER_MODEL_NAME

    @property
    def token_key(self) -> str:
        """The field that limits the answer's tokens: ``max_completion_tokens`` where the model
        declares it and the client set it (an extra field of that name on a text completion is the
        engine's to ignore, not ours to read), else ``max_tokens``."""
        declared = "max_completion_tokens" in type(self).model_fields
        return (
            "max_completion_tokens"
            if declared and getattr(self, "max_completion_tokens", None)
            else "max_tokens"
        )

    @property
    def token_limit(self) -> int | None:
        """The most tokens an answer may have, as the client asked."""
        return getattr(self, self.token_key)

    def over_limits(self, limits: SecurityConfig) -> list[tuple[str, str]]:
        """``(field, problem)`` for each configured cap (``ingress.security``) this request exceeds."""
        texts, where = self.texts(), self.text_field
        problems = []
        if len(texts) > limits.max_messages:
            problems.append((where, f"{len(texts)} messages; at most {limits.max_messages}"))
        longest = max(map(len, texts), default=0)
        if longest > limits.max_message_chars:
            problems.append(
                (where, f"a message has {longest} characters; at most {limits.max_message_chars}")
            )
        if self.token_limit is not None and self.token_limit > limits.max_tokens:
            problems.append(
                (self.token_key, f"{self.token_key} {self.token_limit}; at most {limits.max_tokens}")
            )
        if self.n > limits.max_choices:
            problems.append(("n", f"n {self.n}; at most {limits.max_choices}"))
        return problems

    def wants_usage_chunk(self) -> bool:
        """Whether a streaming client asked for the final usage chunk."""
        options = getattr(self, "stream_options", None)
        return bool(options and options.include_usage)

    def structured(self) -> bool:
        """Whether the output is constrained (JSON mode, a JSON schema, vLLM structured outputs)."""
        response_format = getattr(self, "response_format", None)
        return bool(
            getattr(self, "structured_outputs", None)
            or (response_format is not None and response_format.type in STRUCTURED_FORMATS)
        )


class ChatRequest(RouterFields, ChatCompletionRequest):
    """The body of ``/predict`` and ``/v1/chat/completions``: the whole OpenAI (and vLLM) chat request."""

    engine_request: ClassVar[type[BaseModel]] = ChatCompletionRequest
    call_method: ClassVar[str] = "chat"
    text_field: ClassVar[str] = "messages"

    max_completion_tokens: int | None = Field(None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _message_shapes(cls, data: Any) -> Any:
        """One clear error for a malformed message (the union of OpenAI's message types would
        report a mismatch with each of them)."""
        messages = data.get("messages") if isinstance(data, dict) else None
        for i, message in enumerate(messages if isinstance(messages, list) else []):
            role = message.get("role") if isinstance(message, dict) else None
            if not isinstance(role, str) or role not in ROLES:
                raise invalid([(("messages", i, "role"), f"{role!r} is not one of {sorted(ROLES)}", role)])
            content = message.get("content")
            if not (content is None or isinstance(content, str) or _is_parts(content)):
                raise invalid(
                    [
                        (
                            ("messages", i, "content"),
                            "a string, a list of content parts (objects with a type) or null",
                            content,
                        )
                    ]
                )
        return data

    @model_validator(mode="after")
    def _conversation(self) -> ChatRequest:
        if not self.messages:
            raise invalid([(("messages",), "at least one message is required", [])])
        for i, message in enumerate(self.messages):
            for key, value in message.items():
                try:
                    message[key] = _read_iterators(value)
                except ValidationError as exc:
                    raise invalid(
                        [(("messages", i, key, *e["loc"]), e["msg"], e["input"]) for e in exc.errors()]
                    ) from None
            _encodable(content_text(message.get("content")), ("messages", i, "content"))
        has_user_turn = any(m["role"] == "user" and _has_content(m.get("content")) for m in self.messages)
        if self.routed and not has_user_turn:
            message = (
                "must contain at least one non-empty user message: routing reads it (name an expert in "
                "`model` to send a conversation without one)"
            )
            raise invalid([(("messages",), message, None)])
        return self

    @model_validator(mode="after")
    def _tool_schemas(self) -> ChatRequest:
        """Each tool's ``parameters`` must be a JSON schema (checked against JSON Schema 2020-12's
        metaschema): engines would ignore a malformed one, or fail compiling it into a grammar."""
        for i, tool in enumerate(self.tools or []):
            schema = tool.function.parameters
            if schema is None:
                continue
            try:
                Draft202012Validator.check_schema(schema)
            except SchemaError as exc:
                where = "/".join(map(str, exc.path)) or "(root)"
                message = f"not a valid JSON schema: {exc.message} (at {where})"
                raise invalid([(("tools", i, "function", "parameters"), message, schema)]) from None
        return self

    def routing_messages(self) -> list[Message]:
        """The conversation as a policy reads it: each turn's text, without tool-call JSON, tool
        results or non-text parts (policies read the user turns)."""
        return [
            Message(m["role"], content_text(m.get("content")) if m["role"] != "tool" else "")
            for m in self.messages
        ]

    def texts(self) -> list[str]:
        """The text of every message (for the size caps)."""
        return [content_text(m.get("content")) for m in self.messages]

    def needs(self) -> set[str]:
        """Capabilities the router requires of the expert for this request: tools and structured
        output always; vision/audio for media parts only when it routes (see ``PART_NEEDS``)."""
        needs = {"json_schema"} if self.structured() else set()
        if self.tools and self.tool_choice != "none":
            needs.add("tools")
        for message in self.messages if self.routed else ():
            content = message.get("content")
            if isinstance(content, list):
                needs |= {PART_NEEDS[p["type"]] for p in content if p.get("type") in PART_NEEDS}
        return needs


class TextCompletionRequest(RouterFields, CompletionRequest):
    """The body of ``/v1/completions`` (legacy text completions), routed on the prompt's text."""

    engine_request: ClassVar[type[BaseModel]] = CompletionRequest
    call_method: ClassVar[str] = "completions"
    text_field: ClassVar[str] = "prompt"

    @model_validator(mode="after")
    def _prompt_text(self) -> TextCompletionRequest:
        for text in self.texts():
            _encodable(text, ("prompt",))
        if self.routed and not any(t.strip() for t in self.texts()):
            message = (
                "routing reads the prompt's text; send token ids or embeddings to an expert by name (model)"
            )
            raise invalid([(("prompt",), message, self.prompt)])
        return self

    def texts(self) -> list[str]:
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        return [p for p in prompt or [] if isinstance(p, str)]

    def routing_messages(self) -> list[Message]:
        return [Message("user", "\n".join(self.texts()))]

    def needs(self) -> set[str]:
        return {"json_schema"} if self.structured() else set()


MAX_RERUNS = 4
"""Bodies without one field each validated again, at most, to find a problem's field: bounded work
for a hostile body (each rerun costs what validating the request did)."""


class _Blame:
    """The place of the problems validation reported without one, for one body: the parameter a
    vLLM check names; else the first field the client sent that fails on its own; else the first
    (of ``MAX_RERUNS``) whose removal lets the rest validate or fail elsewhere; else ``()``. The
    search runs once per body, whatever the number of such problems."""

    def __init__(self, model: type[BaseModel], body: Any, handler: Any):
        self.model, self.body, self.handler = model, body, handler
        self._found: Loc | None = None

    def __call__(self, error: BaseException | None) -> Loc:
        parameter = getattr(error, "parameter", None)
        if isinstance(parameter, str) and parameter:  # "tool_choice.function", "messages[0]"
            return tuple(int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", parameter))
        if self._found is None:
            self._found = self._search()
        return self._found

    def _search(self) -> Loc:
        if not isinstance(self.body, dict):
            return ()
        names = _body_keys(self.model)
        sent = [key for key in self.body if key in names]
        for key in sent:
            if _field_errors(self.model, key, self.body[key]):
                return (key,)
        for key in sent[:MAX_RERUNS]:
            try:
                self.handler({k: v for k, v in self.body.items() if k != key})
            except ValidationError as exc:
                if all(err["loc"] and err["loc"][0] != key for err in exc.errors()):
                    return (key,)
            except Exception:
                continue
            else:
                return (key,)
        return ()


@cache
def _body_keys(model: type[BaseModel]) -> frozenset[str]:
    """The keys a body sets ``model``'s fields by: names and aliases."""
    return frozenset(k for name, field in model.model_fields.items() for k in (name, field.alias) if k)


def _field_name(model: type[BaseModel], key: str) -> str | None:
    """The field of ``model`` a body key sets (by alias or name), if any."""
    for name, field in model.model_fields.items():
        if key in (name, field.alias):
            return name
    return None


def _field_errors(model: type[BaseModel], key: str, value: Any) -> list[tuple[Loc, str, Any]]:
    """The problems of ``model``'s field ``key`` (by name or alias) holding ``value``, checked on its own."""
    try:
        _field_adapter(model, key).validate_python(value)
    except ValidationError as exc:
        return [((key, *err["loc"]), _message(err), err["input"]) for err in exc.errors()]
    except Exception as exc:  # e.g. a dataclass's __post_init__ refusing the combination
        return [((key,), f"not a valid value here: {str(exc)[:200]}", value)]
    return []


@cache
def _field_adapter(model: type[BaseModel], key: str) -> TypeAdapter:
    """A validator of one field of ``model`` on its own: its type and constraints."""
    field = model.model_fields[_field_name(model, key) or key]
    return TypeAdapter(Annotated[field.annotation, field])


def _cause(err: Any) -> BaseException | None:
    """The exception a validator raised for this error, if pydantic kept it."""
    return err.get("ctx", {}).get("error")


def _vllm_message(exc: VLLMValidationError) -> str:
    """vLLM's message without its ``(parameter=..., value=...)`` suffix (the error places it)."""
    return str(exc.args[0]) if exc.args else str(exc)


def _message(err: Any) -> str:
    """A validation error's message without pydantic's ``Value error, `` prefix or vLLM's suffix."""
    cause = _cause(err)
    return (
        _vllm_message(cause)
        if isinstance(cause, VLLMValidationError)
        else str(err["msg"]).removeprefix("Value error, ")
    )


def _is_parts(content: Any) -> bool:
    return isinstance(content, list) and all(
        isinstance(p, dict) and isinstance(p.get("type"), str) for p in content
    )


def _has_content(content: Any) -> bool:
    return bool(content.strip()) if isinstance(content, str) else bool(content)
