"""Experts: what a router replica calls, and one module per kind of expert.

An ``Expert`` is called the way a Ray Serve DeploymentHandle to ``ray.serve.llm``'s LLMServer is:
``.options(stream=True)``, then ``.chat.remote(request)`` / ``.completions.remote(request)`` (an
async iterator of replies with ``cancel()``) and ``.check_health.remote()``. How an expert is
served is its kind (``ExpertConfig.kind``), one module each, found by :func:`kind`:

- ``vllm`` (``vllm.py``): its own autoscaled Serve deployment, ``expert:<name>``, running vLLM;
- ``remote`` (``remote.py``): an OpenAI-compatible endpoint the router calls itself;
- ``lora`` (``lora.py``): a LoRA adapter served by another expert's engine.

A kind module, named after the kind, exports ``deployment(expert, config)``, the name of the Serve
deployment that answers for the expert (``None``: nobody's, the router calls it directly), and
``client(expert)``, the router's direct client of it (``None`` when a deployment answers). Adding a
kind is adding its module here and its name (with the field that selects it) in ``router.config``.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Protocol

from router.config import AppConfig, ExpertConfig

EXPERT_PREFIX = "expert:"
"""Expert deployments are named ``expert:<name>``."""


class Expert(Protocol):
    """What a router replica calls for an expert (a DeploymentHandle has this shape)."""

    chat: Any
    completions: Any
    check_health: Any

    def options(self, **kwargs: Any) -> Expert: ...


def kind(expert: ExpertConfig) -> ModuleType:
    """The module of ``expert``'s kind (``deployments/experts/<kind>.py``)."""
    return importlib.import_module(f"{__name__}.{expert.kind}")


def deployment(expert: ExpertConfig, config: AppConfig) -> str | None:
    """The Serve deployment that answers for ``expert`` (None: the router calls it directly)."""
    return kind(expert).deployment(expert, config)


def clients(config: AppConfig) -> dict[str, Expert]:
    """The router's direct clients of the experts no deployment answers for."""
    made = {e.name: kind(e).client(e) for e in config.experts}
    return {name: client for name, client in made.items() if client is not None}
