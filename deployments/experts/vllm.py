"""Expert kind ``vllm`` (the default): its own autoscaled Ray Serve deployment, ``expert:<name>``,
``ray.serve.llm``'s LLMServer running vLLM (with the LoRA adapters of the app's ``lora`` experts that
name it as their base). Ray is imported only to serve: the config validates without it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationError, model_validator

from deployments.experts import EXPERT_PREFIX
from deployments.experts.model_store import resolve_model
from router.config import Autoscaling, ExpertBase, NodeResources, Replica

if TYPE_CHECKING:
    from ray.serve.deployment import Application
    from ray.serve.llm import LLMConfig

    from deployments.config import AppConfig
    from deployments.experts.lora import AdapterExpert


class LocalExpert(ExpertBase):
    """An expert that is its own autoscaled Ray Serve deployment running vLLM (``kind: vllm``, the
    default)."""

    kind: Literal["vllm"] = Field(
        "vllm", description="How it is served (the default: neither endpoint nor base)."
    )
    accelerator: Literal["cpu", "gpu"] = Field("cpu", description="Where the engine runs.")
    accelerator_type: str | None = Field(None, description="Ray accelerator type, e.g. 'A100' (GPU only).")
    num_cpus: float = Field(0.5, gt=0, description="Ray CPUs reserved per replica (logical).")
    num_gpus: float = Field(
        0, ge=0, description="GPUs per replica (GPU only; default: tensor parallel size)."
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="vLLM engine arguments, including its OpenAI frontend's (e.g. enable_auto_tool_choice, "
        "tool_call_parser), which ray.serve.llm hands to the frontend.",
    )
    llm_config: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other ray.serve.llm LLMConfig fields (e.g. lora_config), merged over what the "
        "fields above produce (nested dicts merged key by key); LLMConfig validates the result at start.",
    )
    env_vars: dict[str, str] = Field(default_factory=dict, description="Environment of the engine process.")
    resources: NodeResources = Field(
        default_factory=dict,
        description="Custom Ray resources each replica needs (its engine's placement bundle), e.g. "
        "{expert_node: 1}: pins the expert to the nodes that offer them (a KubeRay worker group's "
        "resources; ops/kuberay.py adds them to the GPU group).",
    )
    autoscaling: Autoscaling = Autoscaling()
    max_ongoing_requests: int = Field(64, ge=1, description="Requests one replica accepts at once (Serve).")

    @model_validator(mode="after")
    def _accelerator_consistent(self) -> LocalExpert:
        if self.accelerator == "cpu" and (self.num_gpus or self.accelerator_type):
            raise ValueError("num_gpus/accelerator_type need accelerator: gpu")
        return self

    @model_validator(mode="after")
    def _tools_need_a_parser(self) -> LocalExpert:
        if "tools" in (self.capabilities or ()) and not self.parses_tool_calls:
            raise ValueError(
                "capabilities: 'tools' needs engine_kwargs enable_auto_tool_choice: true and a "
                "tool_call_parser (e.g. hermes, llama3_json), without which vLLM refuses tools"
            )
        return self

    @property
    def engine(self) -> str:
        return self.name

    @property
    def replica(self) -> Replica:
        """GPUs: a bundle of ``num_gpus`` (default 1) per tensor x pipeline parallel worker."""
        kwargs = self.all_engine_kwargs
        workers = int(kwargs.get("tensor_parallel_size", 1)) * int(kwargs.get("pipeline_parallel_size", 1))
        return Replica(
            cpus=self.num_cpus,
            gpus=(self.num_gpus or 1) * workers if self.accelerator == "gpu" else 0,
            accelerator_type=self.accelerator_type,
            resources=self.resources,
            min_replicas=self.autoscaling.min_replicas,
            max_replicas=self.autoscaling.max_replicas,
        )

    @property
    def all_engine_kwargs(self) -> dict[str, Any]:
        """``engine_kwargs`` with those given under ``llm_config`` on top."""
        return {**self.engine_kwargs, **self.llm_config.get("engine_kwargs", {})}

    @property
    def parses_tool_calls(self) -> bool:
        """Whether the expert's vLLM engine is set up for tool calling."""
        kwargs = self.all_engine_kwargs
        return bool(kwargs.get("enable_auto_tool_choice") and kwargs.get("tool_call_parser"))

    @property
    def abilities(self) -> frozenset[str]:
        if self.capabilities is not None:
            return frozenset(self.capabilities)
        return frozenset({"json_schema", *(["tools"] if self.parses_tool_calls else [])})


# Engine environment every expert gets unless its config says otherwise. HF_HUB_OFFLINE only where
# the model is a local folder (builtin models too): hub ids are downloaded by the engine, with the
# HF_TOKEN of the nodes' environment (Ray workers inherit it; k8s/ sets it from a Secret).
_BASE_ENV = {"TOKENIZERS_PARALLELISM": "false"}
_LOCAL_MODEL_ENV = {"HF_HUB_OFFLINE": "1"}
_CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}


def deployment(expert: LocalExpert, config: AppConfig) -> str:
    return EXPERT_PREFIX + expert.name


def check(expert: LocalExpert, config: AppConfig) -> None:
    expert_llm_config(expert, config.adapters(expert.name))


def application(expert: LocalExpert, config: AppConfig) -> Application:
    """Its LLMServer deployment, serving the LoRA adapters based on it too."""
    from ray.serve.llm import build_llm_deployment

    from deployments.experts.engine import ExpertServer

    llm_config = expert_llm_config(expert, config.adapters(expert.name))
    return build_llm_deployment(llm_config, name_prefix=EXPERT_PREFIX, deployment_cls=ExpertServer)


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
    from ray.serve.llm import LLMConfig

    from deployments.experts import lora  # it imports this module: here, not at the top

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
