"""Experts: what a router replica calls, and one module per kind of expert.

An ``Expert`` is called the way a Ray Serve DeploymentHandle to ``ray.serve.llm``'s LLMServer is:
``.options(stream=True)``, then ``.chat.remote(request)`` / ``.completions.remote(request)`` (an
async iterator of replies with ``cancel()``) and ``.check_health.remote()``. How an expert is
served is its kind (``kind:`` in its config), one module each:

- ``vllm`` (``vllm.py``): its own autoscaled Serve deployment, ``expert:<name>``, running vLLM;
- ``remote`` (``remote.py``): an OpenAI-compatible endpoint the router calls itself;
- ``lora`` (``lora.py``): a LoRA adapter served by another expert's vLLM engine.

A kind module holds everything of its kind: its config model (a ``router.config.ExpertBase`` with
``kind: Literal["<kind>"]``, its fields, and the hooks the rest of the system reads: ``engine``,
``replica``, ``check_team``, ``abilities``), and how it is served:

- ``deployment(expert, config)``: the name of the Serve deployment that answers for it (``None``:
  nobody's, the router calls it directly);
- ``check(expert, config)``: raise ValueError when its serving settings are wrong (without Ray:
  the start checks every expert before anything is deployed);
- ``application(expert, config)``: the Serve deployment it brings, bound (``None``: none);
- ``client(expert)``: the router's direct client of it (``None`` when a deployment answers).

Adding a kind is adding its module here and its config model to ``EXPERT_KINDS``
(``deployments/config.py``). Modules import Ray only where they serve, so a config validates
without it.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

from router.config import ExpertBase

if TYPE_CHECKING:
    from ray.serve.deployment import Application

    from deployments.config import AppConfig

EXPERT_PREFIX = "expert:"
"""Expert deployments are named ``expert:<name>``."""


class Expert(Protocol):
    """What a router replica calls for an expert (a DeploymentHandle has this shape)."""

    chat: Any
    completions: Any
    check_health: Any

    def options(self, **kwargs: Any) -> Expert: ...


def kind(expert: ExpertBase) -> ModuleType:
    """The module of ``expert``'s kind: the one its config model is defined in."""
    return importlib.import_module(type(expert).__module__)


def deployment(expert: ExpertBase, config: AppConfig) -> str | None:
    """The Serve deployment that answers for ``expert`` (None: the router calls it directly)."""
    return kind(expert).deployment(expert, config)


def check(config: AppConfig) -> None:
    """ValueError, naming the expert's place, when an expert's serving settings are wrong."""
    for i, expert in enumerate(config.experts):
        try:
            kind(expert).check(expert, config)
        except Exception as exc:  # e.g. a model that does not resolve, an llm_config LLMConfig refuses
            raise ValueError(f"experts[{i}]: {exc}") from None


def applications(config: AppConfig) -> dict[str, Application]:
    """The Serve deployments the experts bring, bound, by deployment name (needs a running Ray)."""
    made = ((e, kind(e).application(e, config)) for e in config.experts)
    return {deployment(e, config): app for e, app in made if app is not None}


def clients(config: AppConfig) -> dict[str, Expert]:
    """The router's direct clients of the experts no deployment answers for."""
    made = {e.name: kind(e).client(e) for e in config.experts}
    return {name: client for name, client in made.items() if client is not None}
