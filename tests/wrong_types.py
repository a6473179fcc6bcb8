"""Every JSON type in every field: the values and bodies the wrong-type tests send (in-process to the
request and config models, over HTTP to the live app). Fields are read from the models, so a field
added later is covered without touching the tests."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any, get_args, get_origin

from pydantic import BaseModel

JSON_VALUES: list[Any] = [
    None,
    True,
    5,
    -1,
    10**12,
    1.5,
    "x",
    {},
    [],
    [None],
    [True],
    [5],
    [1.5],
    ["x"],
    [{}],
    [[]],
]
"""null, boolean, integers (small, negative, huge), a float, a string, an object, the empty array and
an array of each of those."""
OVER_HTTP: list[Any] = [v for v in JSON_VALUES if v not in ([True], [1.5], ["x"], [[]])]
"""The twelve values issue 24 sent to the live app (arrays of objects, nulls and integers among them;
each costs an HTTP round trip, and accepted ones an engine's answer)."""

USER_TURN = [{"role": "user", "content": "Say hi"}]
CHAT_BASES: list[dict[str, Any]] = [
    {"messages": USER_TURN},
    {"messages": USER_TURN, "model": "alpha", "stream": True},
    {
        "messages": USER_TURN,
        "tools": [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}],
        "tool_choice": "auto",
    },
]
"""Valid chat bodies a field is changed in: routed; bypassed (``alpha``) and streamed; with tools."""
COMPLETION_BASES: list[dict[str, Any]] = [
    {"prompt": "Say hi"},
    {"prompt": "Say hi", "model": "alpha", "stream": True},
]


def body_keys(model: type[BaseModel]) -> list[str]:
    """The keys a client sets ``model``'s fields by (aliases where declared)."""
    return [field.alias or name for name, field in model.model_fields.items()]


def wrong_typed(model: type[BaseModel], bases: list[dict[str, Any]]) -> Iterator[tuple[str, Any, dict]]:
    """``(key, value, body)``: each base with one field set to each JSON value."""
    for base in bases:
        for key in body_keys(model):
            for value in JSON_VALUES:
                yield key, value, {**base, key: value}


def names_the_field(path: str, key: str) -> bool:
    """Whether an error's field path is ``key`` or a place inside it."""
    return path == key or path.startswith((f"{key}.", f"{key}["))


def _nested(annotation: Any) -> tuple[list[type[BaseModel]], bool]:
    """The models a field holds (``X``, ``X | None``, ``list[X]``, or a union of models such as the
    expert kinds), and whether it holds a list."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation], False
    if get_origin(annotation) is list:
        inner, _ = _nested(get_args(annotation)[0])
        return inner, bool(inner)
    models, many = [], False
    for arg in get_args(annotation):
        inner, listed = _nested(arg)
        models += [m for m in inner if m not in models]
        many = many or listed
    return models, many


def _field(models: list[type[BaseModel]], key: str) -> tuple[type[BaseModel], str]:
    """The first of ``models`` with a field set by ``key``, and the field's name."""
    for model in models:
        for name, field in model.model_fields.items():
            if key in (name, field.alias):
                return model, name
    raise KeyError(key)


def config_places(
    model: type[BaseModel], document: dict[str, Any], starts: dict[type[BaseModel], dict[str, Any]]
) -> Iterator[tuple[str | int, ...]]:
    """Every place of ``model``'s fields at any depth in ``document``: a nested model's fields under
    its own (the first item of a list; every member of a union of models), entered with
    ``starts[Model]`` (its required fields) where the document has none."""
    seen: set[tuple[str | int, ...]] = set()
    for key in body_keys(model):
        yield (key,)
        inners, many = _nested(model.model_fields[_field([model], key)[1]].annotation)
        held = document.get(key)
        for inner in inners:
            sub = (held[0] if many and held else held) if held else starts.get(inner, {})
            for place in config_places(inner, sub, starts):
                full = (key, 0, *place) if many else (key, *place)
                if full not in seen:
                    seen.add(full)
                    yield full


def set_at(
    document: dict[str, Any],
    place: tuple[str | int, ...],
    value: Any,
    starts: dict[type[BaseModel], dict[str, Any]],
    model: type[BaseModel],
) -> dict[str, Any]:
    """A deep copy of ``document`` with ``value`` at ``place`` (missing parents made from ``starts``)."""
    document = copy.deepcopy(document)
    node: Any = document
    models = [model]
    for part in place[:-1]:
        if isinstance(part, str):
            holder, name = _field(models, part)
            models, many = _nested(holder.model_fields[name].annotation)
            if part not in node or node[part] is None:
                start = copy.deepcopy(starts.get(models[0], {}))
                node[part] = [start] if many else start
        node = node[part]
    node[place[-1]] = value
    return document
