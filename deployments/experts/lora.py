"""A LoRA adapter expert (``base: <local expert>``): answered by its base's vLLM engine, which loads
the adapter at start as a static LoRA module named after the expert; a request whose ``model`` is
the expert's name runs through the adapter (vLLM's OpenAI serving layer picks it by name)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deployments.experts import EXPERT_PREFIX
from deployments.experts.model_store import resolve_model
from router.config import AdapterExpert, AppConfig

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The ``max_lora_rank`` values vLLM accepts."""


def deployment(expert: AdapterExpert, config: AppConfig) -> str:
    return EXPERT_PREFIX + config.serving(expert.name).name


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
