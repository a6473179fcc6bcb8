"""The Serve application builder: ``import_path: deployments.app:build_app`` in serve_config.yaml."""

from __future__ import annotations

from typing import Any

from ray.serve.deployment import Application

from deployments.experts import build_expert
from deployments.ingress import RouterIngress
from router.config import AppConfig, ConfigError
from router.policy import build_policy


def build_app(args: dict[str, Any]) -> Application:
    """Validate the config, then bind one LLMServer deployment per expert into the router ingress."""
    config = AppConfig.parse(args)
    try:
        build_policy(config.policy, config.expert_names)
    except ValueError as exc:
        raise ConfigError(f"invalid expert-router configuration:\n  policy: {exc}") from None
    # Local experts are deployments; remote ones (``endpoint``) are called by the router directly.
    try:
        experts = {e.name: build_expert(e) for e in config.experts if e.endpoint is None}
    except ValueError as exc:  # LLMConfig refused an expert's llm_config
        raise ConfigError(f"invalid expert-router configuration:\n  {exc}") from None
    ingress = config.ingress
    actor_options = {"num_cpus": ingress.num_cpus, "runtime_env": {"env_vars": ingress.env_vars}}
    if ingress.resources:
        actor_options["resources"] = dict(ingress.resources)
    per_node = ingress.max_replicas_per_node
    placement = {"max_replicas_per_node": per_node} if per_node else {}
    return RouterIngress.options(
        ray_actor_options=actor_options,
        **placement,
        max_ongoing_requests=ingress.max_ongoing_requests,
        logging_config={"enable_access_log": ingress.access_log},
        autoscaling_config=ingress.autoscaling.model_dump(exclude_none=True),
    ).bind(config.model_dump(mode="json"), experts)
