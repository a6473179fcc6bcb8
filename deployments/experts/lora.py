"""Expert kind ``lora`` (or just ``base: <vllm expert>``): a LoRA adapter answered by its base's vLLM
engine, which loads the adapter at start as a static LoRA module named after the expert; a request
whose ``model`` is the expert's name runs through the adapter (vLLM's OpenAI serving layer picks it
by name)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator

from deployments.experts import EXPERT_PREFIX
from deployments.experts.model_store import resolve_model
from deployments.experts.vllm import LocalExpert
from router.config import ExpertBase

if TYPE_CHECKING:
    from deployments.config import AppConfig


class AdapterExpert(ExpertBase):
    """A LoRA adapter served by another local expert's vLLM engine (``kind: lora``, or just ``base``);
    ``model`` is the adapter: a PEFT folder, a hub id or ``builtin:<name>``."""

    implied_by: ClassVar[str | None] = "base"
    kind: Literal["lora"] = Field("lora", description="How it is served (implied by base).")
    base: str = Field(
        description="The name of the local expert whose vLLM engine serves this adapter beside its own "
        "model. Many adapters share one engine; its engine settings are the base's."
    )

    @model_validator(mode="before")
    @classmethod
    def _runs_on_its_base(cls, data: Any) -> Any:
        others = LocalExpert.model_fields.keys() - cls.model_fields.keys()
        own = [key for key in data if key in others] if isinstance(data, dict) else []
        if own:  # a friendlier error than "extra inputs": where these belong
            raise ValueError(
                f"a LoRA adapter expert (base: {data.get('base')}) runs on its base's engine: set "
                f"{', '.join(own)} on expert '{data.get('base')}' instead"
            )
        return data

    @property
    def engine(self) -> str:
        return self.base

    def check_team(self, team: Mapping[str, ExpertBase]) -> None:
        engines = sorted(name for name, e in team.items() if isinstance(e, LocalExpert))
        if self.base not in engines:
            raise ValueError(
                f"expert '{self.name}': base '{self.base}' must name a local (vLLM) expert of this "
                f"app; local experts: {', '.join(engines) or 'none'}"
            )
        if "tools" in (self.capabilities or ()) and not team[self.base].parses_tool_calls:
            raise ValueError(
                f"expert '{self.name}': capabilities 'tools' needs its base '{self.base}' to parse tool "
                "calls (engine_kwargs enable_auto_tool_choice: true and a tool_call_parser)"
            )


LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The ``max_lora_rank`` values vLLM accepts."""


def deployment(expert: AdapterExpert, config: AppConfig) -> str:
    return EXPERT_PREFIX + config.serving(expert.name).name


def check(expert: AdapterExpert, config: AppConfig) -> None:
    return None  # its base's engine settings are checked with the adapters on them


def application(expert: AdapterExpert, config: AppConfig) -> None:
    return None  # its base's deployment serves it


def client(expert: AdapterExpert) -> None:
    return None


def _lora_module(name: str, path: str) -> Any:
    """vLLM's static LoRA module entry (its OpenAI frontend loads these at engine start)."""
    try:
        from vllm.entrypoints.openai.models.protocol import LoRAModulePath
    except ImportError:  # vLLM before the entrypoints were reorganised
        from vllm.entrypoints.openai.serving_models import LoRAModulePath
    return LoRAModulePath(name=name, path=path)


def _adapter_rank(path: str) -> int:
    """The largest LoRA rank of a local PEFT adapter (``r``, ``rank_pattern``); 16 (vLLM's default)
    for a hub id, whose adapter_config.json is not read before the engine starts."""
    try:
        config = json.loads((Path(path) / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return 16
    return max([int(config.get("r", 16)), *map(int, (config.get("rank_pattern") or {}).values())])


def engine_kwargs(adapters: Sequence[AdapterExpert]) -> dict[str, Any]:
    """Engine arguments that serve ``adapters`` on one vLLM engine beside its base model."""
    if not adapters:
        return {}
    paths = {a.name: resolve_model(a.model) for a in adapters}
    rank = max(_adapter_rank(p) for p in paths.values())
    if rank > LORA_RANKS[-1]:
        raise ValueError(f"LoRA rank {rank} is over vLLM's largest max_lora_rank, {LORA_RANKS[-1]}")
    return {
        "enable_lora": True,
        "max_loras": len(adapters),
        "max_lora_rank": min(r for r in LORA_RANKS if r >= rank),
        "lora_modules": [_lora_module(name, path) for name, path in paths.items()],
    }
