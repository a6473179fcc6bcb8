"""The Serve application builder: ``import_path: deployments.app:build_app`` in serve_config.yaml."""

from __future__ import annotations

from typing import Any

from ray.serve.deployment import Application

from deployments.config import AppConfig
from deployments.experts import applications, check, deployment
from deployments.ingress import RouterIngress
from router.config import ConfigError
from router.policy import build_policy


def check_config(args: Any) -> AppConfig:
    """Everything the start checks, without Ray: the config models, the policy and how each expert
    is served (a vLLM expert's LLMConfig, with the LoRA adapters its engine serves). Any mistake is
    a ConfigError naming its place; never another exception."""
    config = AppConfig.parse(args)
    try:
        build_policy(config.policy, config.experts)
    except Exception as exc:  # a policy's args of the wrong shape, an artifact that does not load...
        raise ConfigError(f"invalid expert-router configuration:\n  policy: {exc}") from None
    try:
        check(config)
    except ValueError as exc:
        raise ConfigError(f"invalid expert-router configuration:\n  {exc}") from None
    return config


def build_app(args: dict[str, Any]) -> Application:
    """The app of a serve config's ``args`` (its ``import_path``; Serve requires exactly one
    parameter): see :func:`bind_app`."""
    return bind_app(args)


def bind_app(args: dict[str, Any], user_config: dict[str, Any] | None = None) -> Application:
    """Check the config, then bind the experts' deployments (one LLMServer per local expert) into
    the router ingress, under the name of every expert each answers for (a LoRA adapter: its base's).
    ``user_config``: the ingress deployment's, as a serve config's ``deployments:`` entry gives it
    (for ``serve.run`` from Python; Serve applies a config file's entries itself)."""
    config = check_config(args)
    deployments = applications(config)
    experts = {
        e.name: deployments[name] for e in config.experts if (name := deployment(e, config)) is not None
    }
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
        **({"user_config": user_config} if user_config is not None else {}),
    ).bind(config.model_dump(mode="json"), experts)
