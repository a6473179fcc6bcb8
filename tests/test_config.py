"""The configuration model: defaults, validation messages, and the shipped config files."""

from pathlib import Path

import pytest

from router.config import AppConfig, ConfigError, Price, load_serve_config

REPO = Path(__file__).resolve().parent.parent


def minimal(**overrides):
    args = {"experts": [{"name": "general", "model": "builtin:tiny-llama"}]}
    args.update(overrides)
    return args


def test_minimal_config_gets_defaults():
    cfg = AppConfig.parse(minimal())
    assert cfg.expert_names == ["general"]
    assert cfg.policy.name == "random"
    assert cfg.experts[0].accelerator == "cpu"
    assert cfg.ingress.max_ongoing_requests >= 64  # the default 5 collapses throughput


@pytest.mark.parametrize(
    "args, message",
    [
        ({"experts": []}, "experts: List should have at least 1 item"),
        ({}, "experts: Field required"),
        (minimal(experts=[{"name": "a", "model": "m"}, {"name": "a", "model": "m"}]), "repeated: a"),
        (minimal(experts=[{"name": "router", "model": "m"}]), "'router' is reserved"),
        (minimal(experts=[{"name": "bad name!", "model": "m"}]), "experts[0].name"),
        (
            minimal(experts=[{"name": "a", "model": "m", "price": {"input_per_1m": -1}}]),
            "experts[0].price.input_per_1m",
        ),
        (
            minimal(
                experts=[{"name": "a", "model": "m", "autoscaling": {"min_replicas": 3, "max_replicas": 1}}]
            ),
            "min_replicas (3) > max_replicas (1)",
        ),
        (minimal(experts=[{"name": "a", "model": "m", "num_gpus": 1}]), "need accelerator: gpu"),
        (
            minimal(experts=[{"name": "a", "model": "m", "modle": "typo"}]),
            "experts[0].modle: Extra inputs are not permitted",
        ),
        (minimal(ingress={"max_attempts": 0}), "ingress.max_attempts"),
    ],
)
def test_mistakes_are_reported_by_field(args, message):
    with pytest.raises(ConfigError) as info:
        AppConfig.parse(args)
    assert message in str(info.value)


def test_every_problem_is_listed_at_once():
    with pytest.raises(ConfigError) as info:
        AppConfig.parse({"experts": [{"name": "", "model": ""}], "ingress": {"num_cpus": 0}})
    text = str(info.value)
    assert "experts[0].name" in text and "experts[0].model" in text and "ingress.num_cpus" in text


def test_price_cost():
    assert Price(input_per_1m=1.0, output_per_1m=3.0).cost(1_000_000, 500_000) == pytest.approx(2.5)


@pytest.mark.parametrize("path", ["serve_config.yaml", "configs/tiny_cpu.yaml", "configs/gpu_cluster.yaml"])
def test_shipped_configs_are_valid(path):
    cfg = load_serve_config(REPO / path)
    assert len(cfg.experts) >= 2


def test_default_config_serves_real_gemma_experts_on_cpu():
    cfg = load_serve_config(REPO / "serve_config.yaml")
    assert {e.model for e in cfg.experts} == {"builtin:gemma-3-270m"}
    assert all(e.accelerator == "cpu" for e in cfg.experts)
    assert len({e.system_prompt for e in cfg.experts}) == len(cfg.experts)  # distinct domain profiles


def test_gpu_example_uses_hub_models_with_gpu_autoscaling():
    cfg = load_serve_config(REPO / "configs/gpu_cluster.yaml")
    for expert in cfg.experts:
        assert expert.accelerator == "gpu" and "/" in expert.model
        assert expert.autoscaling.max_replicas > expert.autoscaling.min_replicas


def test_missing_application_is_a_clear_error(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("applications: []\n")
    with pytest.raises(ConfigError, match="no application"):
        load_serve_config(path)


def test_app_builder_rejects_a_policy_that_names_an_unknown_expert():
    from deployments.app import build_app

    with pytest.raises(ConfigError, match="policy: fixed policy: unknown expert 'art'"):
        build_app(minimal(policy={"name": "fixed", "args": {"expert": "art"}}))
