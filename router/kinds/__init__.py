"""The registry of trained router kinds: one module per kind in this package, found by its name and
imported only when used (serving an ONNX kNN artifact imports no torch).

A kind module exports one :class:`Kind`, ``KIND``: its name, its settings (a pydantic model,
unknown keys refused), its :class:`router.trained.RoutingModel` subclass (scores, save and load),
what it fits (``"soft_labels"``, the softmax of quality / T, or ``"quality"``, the raw per-expert
quality), the grid nested cross-validation chooses among, and how it is fitted: either
``fit(texts, targets, experts, costs, settings)`` (``costs``: the training queries' (n, m) costs; a
router keeps their per-expert mean, or more), or, for a kind trained by gradient,
``prepare(texts, settings)`` (driver-side state, e.g. a vocabulary),
``build_model(n_experts, settings, **prepared)`` (a torch module: texts -> logits) and
``from_model(experts, expected_costs, settings, model, **prepared)``; training (training/neural.py,
locally or as a Ray Train job) owns the gradient loop, so serving never imports it.

Adding a kind is adding a module here: the CLI's choices, the pipeline's candidates, the serving
policy names and the cross-validation harness all list kinds with :func:`names`.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class Settings(BaseModel):
    """What every kind's settings hold; each kind's model adds its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    temperature: float | None = Field(
        None, description="The soft-label temperature it was trained with (recorded by training)."
    )
    quality_column: str | None = Field(None, description="The column it learned (recorded by training).")


class NeuralSettings(Settings):
    """Settings of the kinds trained by gradient (local or as a Ray Train job)."""

    epochs: int = Field(ge=1)
    lr: float = Field(gt=0)
    batch_size: int = Field(ge=1)
    seed: int = 0
    device: str = Field(
        "cpu", description="Training only: cpu, cuda, or auto (the GPU where torch sees one)."
    )


@dataclass(frozen=True)
class Kind:
    """One router kind: everything training, evaluation and serving need of it."""

    name: str
    settings: type[Settings]
    model: type
    """Its ``RoutingModel`` subclass: scores, saves and loads the artifact."""
    fit: Callable[..., Any] | None
    """``None`` for a kind trained by gradient (``build_model``)."""
    targets: Literal["soft_labels", "quality"]
    grid: dict[str, list[Any]] = field(default_factory=dict)
    """What nested cross-validation chooses among (settings of this kind)."""
    prepare: Callable[..., dict[str, Any]] | None = None
    build_model: Callable[..., Any] | None = None
    from_model: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        if (self.fit is None) == (self.build_model is None):
            raise ValueError(f"kind {self.name}: give fit, or build_model to train by gradient (not both)")
        unknown = set(self.grid) - set(self.settings.model_fields)
        if unknown:
            raise ValueError(f"kind {self.name}: grid settings it does not have: {sorted(unknown)}")

    @property
    def neural(self) -> bool:
        """Trains by gradient (as a Ray Train job)."""
        return self.build_model is not None

    def configure(self, config: Mapping[str, Any] | None = None) -> Settings:
        """Its settings from ``config`` (defaults for what it leaves out); ValueError naming every
        unknown or wrong setting."""
        try:
            return self.settings.model_validate(dict(config or {}))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"{self.name} settings: {problems}") from None


def names() -> list[str]:
    """Every registered kind."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def load(name: str) -> Kind:
    """Kind ``name`` (ValueError naming the known kinds if there is none)."""
    if name not in names():
        raise ValueError(f"unknown router kind '{name}'; known: {', '.join(names())}")
    return importlib.import_module(f"{__name__}.{name}").KIND


def is_neural(name: str) -> bool:
    """Whether kind ``name`` trains by gradient (as a Ray Train job)."""
    return load(name).neural


def parse(spec: str) -> list[str]:
    """Kinds from a comma-separated list, or ``all``."""
    wanted = names() if spec.strip() == "all" else [k.strip() for k in spec.split(",") if k.strip()]
    for name in wanted:
        load(name)
    return wanted
