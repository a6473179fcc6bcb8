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


def _nested(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The model a field holds (``X``, ``X | None`` or ``list[X]``), and whether it holds a list."""
    for arg in (annotation, *get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg, False
        if get_origin(arg) is list:
            inner, _ = _nested(get_args(arg)[0])
            if inner is not None:
                return inner, True
    return None, False


def config_places(
    model: type[BaseModel], document: dict[str, Any], starts: dict[type[BaseModel], dict[str, Any]]
) -> Iterator[tuple[str | int, ...]]:
    """Every place of ``model``'s fields at any depth in ``document``: a nested model's fields under
    its own (the first item of a list), entered with ``starts[Model]`` (its required fields) where
    the document has none."""
    for key in body_keys(model):
        yield (key,)
        name = next(n for n, f in model.model_fields.items() if key in (n, f.alias))
        inner, many = _nested(model.model_fields[name].annotation)
        if inner is None:
            continue
        held = document.get(key)
        sub = (held[0] if many and held else held) if held else starts.get(inner, {})
        for place in config_places(inner, sub, starts):
            yield ((key, 0, *place) if many else (key, *place))


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
    for i, part in enumerate(place[:-1]):
        if isinstance(part, str):
            name = next(n for n, f in model.model_fields.items() if part in (n, f.alias))
            model, many = _nested(model.model_fields[name].annotation)
            if part not in node or node[part] is None:
                node[part] = (
                    [copy.deepcopy(starts.get(model, {}))] if many else copy.deepcopy(starts.get(model, {}))
                )
        node = node[part]
    node[place[-1]] = value
    return document
