"""The configuration reference (``docs/configuration.md``), generated from the pydantic models of
``deployments/config.py`` (the experts' kinds in ``deployments/experts/``, the rest in
``router/config.py``); a test fails when the file is stale. Regenerate with::

    .venv/bin/python -m ops.config_reference > docs/configuration.md
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from deployments.config import AppConfig
from router.config import RouterUserConfig

HEADER = """# Configuration reference

Generated from the pydantic models of `deployments/config.py` (each expert kind's in its module of
`deployments/experts/`, the rest in `router/config.py`) by
`.venv/bin/python -m ops.config_reference > docs/configuration.md` (a test fails when this file is
stale). An app's configuration is the `args` of the `expert-router` application in a Serve
config file (`serve_config.yaml`, `configs/*.yaml`); the ingress deployment's `user_config` takes
`RouterUserConfig` (a live policy rollout, docs/operations.md). Unknown keys are errors everywhere.
"""


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation refers to (through lists, dicts, unions, Annotated)."""
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def _type_name(annotation: Any) -> str:
    if inspect.isclass(annotation) and not typing.get_args(annotation):
        return {"NoneType": "null"}.get(annotation.__name__, annotation.__name__)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(a) for a in args)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in args)
    name = getattr(origin, "__name__", str(origin))
    return f"{name}[{', '.join(_type_name(a) for a in args)}]"


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.default_factory() if field.default is PydanticUndefined else field.default
    if isinstance(value, BaseModel):
        return "see below"
    return f"`{json.dumps(value, default=str)}`"


def _section(model: type[BaseModel]) -> list[str]:
    doc = " ".join(inspect.cleandoc(model.__doc__ or "").split("\n\n")[0].split())
    lines = [
        f"## `{model.__name__}`",
        "",
        doc,
        "",
        "| field | type | default | what it is |",
        "|---|---|---|---|",
    ]
    for name, field in model.model_fields.items():
        text = " ".join((field.description or "").split()).replace("|", "\\|")
        if not text and _models(field.annotation):
            text = ", ".join(f"see `{m.__name__}`" for m in _models(field.annotation))
        lines.append(f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | {text} |")
    return [*lines, ""]


def reference() -> str:
    """The whole reference: every model reachable from AppConfig and RouterUserConfig."""
    seen: list[type[BaseModel]] = []
    queue: list[type[BaseModel]] = [AppConfig, RouterUserConfig]
    while queue:
        model = queue.pop(0)
        if model in seen:
            continue
        seen.append(model)
        queue += [m for f in model.model_fields.values() for m in _models(f.annotation)]
    return "\n".join([HEADER, *(line for model in seen for line in _section(model))])


if __name__ == "__main__":
    print(reference(), end="")
