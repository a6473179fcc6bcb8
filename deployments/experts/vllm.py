"""A local expert: its own autoscaled Ray Serve deployment, ``ray.serve.llm``'s LLMServer running
vLLM (with the LoRA adapters of the app's adapter experts that name it as their base)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ray.serve.llm import LLMConfig, LLMServer

from deployments.experts import EXPERT_PREFIX, lora
from deployments.experts.model_store import resolve_model
from router.config import AdapterExpert, AppConfig, LocalExpert

# Engine environment every expert gets unless its config says otherwise. HF_HUB_OFFLINE only where
# the model is a local folder (builtin models too): hub ids are downloaded by the engine, with the
# HF_TOKEN of the nodes' environment (Ray workers inherit it; k8s/ sets it from a Secret).
_BASE_ENV = {"TOKENIZERS_PARALLELISM": "false"}
_LOCAL_MODEL_ENV = {"HF_HUB_OFFLINE": "1"}
_CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}


def deployment(expert: LocalExpert, config: AppConfig) -> str:
    return EXPERT_PREFIX + expert.name


def client(expert: LocalExpert) -> None:
    return None


def _autoscaling(expert: LocalExpert) -> dict[str, Any]:
    return expert.autoscaling.model_dump(exclude_none=True)


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` on top, nested dicts merged key by key."""
    out = dict(base)
    for key, value in over.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merged(out[key], value) if nested else value
    return out


def expert_llm_config(expert: LocalExpert, adapters: Sequence[AdapterExpert] = ()) -> LLMConfig:
    """The ray.serve.llm configuration of one expert (CPU: vllm-cpu; GPU: CUDA vLLM) and of the
    LoRA ``adapters`` its engine serves, with the expert's ``llm_config`` merged over it; LLMConfig
    validates the result (ValueError if wrong)."""
    on_cpu = expert.accelerator == "cpu"
    source = resolve_model(expert.model)
    local = [source, *(resolve_model(a.model) for a in adapters)]  # offline only if all are folders
    # Unbounded, vLLM on CPU claims ~92% of RAM and fails: bound the KV cache unless the config does.
    bounded = "kv_cache_memory_bytes" in expert.all_engine_kwargs
    env = {
        **_BASE_ENV,
        **(_LOCAL_MODEL_ENV if all(Path(m).is_dir() for m in local) else {}),
        **(_CPU_ENV if on_cpu and not bounded else {}),
        **expert.env_vars,
    }
    deployment_config: dict[str, Any] = {
        "autoscaling_config": _autoscaling(expert),
        "max_ongoing_requests": expert.max_ongoing_requests,
        # On CPU the engine's placement bundle carries the expert's CPUs; the replica adds none.
        "ray_actor_options": {"num_cpus": 0 if on_cpu else expert.num_cpus},
    }
    engine_kwargs = {"enforce_eager": on_cpu, **lora.engine_kwargs(adapters), **expert.engine_kwargs}
    kwargs: dict[str, Any] = {}
    if on_cpu:
        kwargs["accelerator_config"] = {"kind": "cpu"}
        kwargs["placement_group_config"] = {"bundles": [{"CPU": expert.num_cpus, **expert.resources}]}
    else:
        kwargs["accelerator_type"] = expert.accelerator_type
        if expert.num_gpus or expert.resources:
            bundle = {"GPU": expert.num_gpus or 1, **expert.resources}
            kwargs["placement_group_config"] = {"bundle_per_worker": bundle}
    config = {
        "model_loading_config": {"model_id": expert.name, "model_source": source},
        "engine_kwargs": engine_kwargs,
        "deployment_config": deployment_config,
        "runtime_env": {"env_vars": env},
        **kwargs,
    }
    try:
        return LLMConfig.model_validate(merged(config, expert.llm_config))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"expert '{expert.name}': llm_config: LLMConfig says {problems}") from None


class ExpertServer(LLMServer):
    """ray.serve.llm's LLMServer, plus what the router asks of its experts beyond OpenAI."""

    async def engine_load(self) -> dict[str, int]:
        """Requests the engine holds right now (running or waiting): 0 once abandoned requests are
        cancelled (the router cancels them on timeout, fallback and client disconnect)."""
        client = getattr(self.engine, "_engine_client", None)
        return {"unfinished_requests": int(client.get_num_unfinished_requests()) if client else 0}
