"""The registry of trained router kinds: one module per kind in this package, found by its name and
imported only when used (serving an ONNX kNN artifact imports no torch).

A kind module defines ``ROUTER`` (its :class:`router.trained.TrainedRouter` subclass), ``DEFAULTS``
(its settings), ``TARGETS`` (what it fits: ``"soft_labels"``, the softmax of quality / T, or
``"quality"``, the raw per-expert quality) and ``fit(texts, targets, experts, costs, config)``
(``costs``: the training queries' (n, m) costs; a router keeps their per-expert mean, or more).
A kind that trains by gradient also sets ``NEURAL = True`` and defines ``prepare(texts,
config)`` (driver-side state, e.g. a vocabulary), ``build_model(n_experts, config, **prepared)``
and ``from_model(experts, expected_costs, config, model, **prepared)`` for the Ray Train job.

Adding a kind is adding a module here: the CLI's choices, the pipeline's candidates, the serving
policy names and the cross-validation harness all list kinds with :func:`names`.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def names() -> list[str]:
    """Every registered kind."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def load(name: str) -> ModuleType:
    """The module of kind ``name`` (ValueError naming the known kinds if there is none)."""
    if name not in names():
        raise ValueError(f"unknown router kind '{name}'; known: {', '.join(names())}")
    return importlib.import_module(f"{__name__}.{name}")


def is_neural(name: str) -> bool:
    """Whether kind ``name`` trains by gradient (as a Ray Train job)."""
    return bool(getattr(load(name), "NEURAL", False))


def parse(spec: str) -> list[str]:
    """Kinds from a comma-separated list, or ``all``."""
    wanted = names() if spec.strip() == "all" else [k.strip() for k in spec.split(",") if k.strip()]
    for name in wanted:
        load(name)
    return wanted
