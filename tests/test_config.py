"""The configuration model: defaults, validation messages, and the shipped config files."""

from pathlib import Path

import pytest

from deployments.config import EXPERT, AppConfig, load_serve_config
from deployments.experts.lora import AdapterExpert
from deployments.experts.remote import RemoteEndpoint, RemoteExpert
from deployments.experts.vllm import LocalExpert
from router.config import ConfigError, Price, field_path
from tests.wrong_types import JSON_VALUES, config_places, set_at

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
        (  # a base named twice: the repetition is the error, not the base
            minimal(
                experts=[
                    {"name": "a", "model": "m"},
                    {"name": "a", "model": "m", "endpoint": {"base_url": "https://x.org/v1"}},
                    {"name": "l", "model": "m", "base": "a"},
                ]
            ),
            "repeated: a",
        ),
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
        (
            minimal(experts=[{"name": "a", "model": "m", "capabilities": ["tools"]}]),
            "'tools' needs engine_kwargs enable_auto_tool_choice",
        ),
        (minimal(experts=[{"name": "a", "model": "m", "capabilities": ["telepathy"]}]), "capabilities[0]"),
        (
            minimal(experts=[{"name": "a", "model": "m", "resources": {"GPU": 1}}]),
            "GPU: set by num_cpus/num_gpus",
        ),
        (minimal(ingress={"resources": {"router_node": 0}}), "ingress.resources.router_node"),
        (minimal(ingress={"max_replicas_per_node": 0}), "ingress.max_replicas_per_node"),
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


TOOL_ENGINE = {"enable_auto_tool_choice": True, "tool_call_parser": "hermes"}


@pytest.mark.parametrize(
    "expert, abilities",
    [
        ({}, {"json_schema"}),
        ({"engine_kwargs": TOOL_ENGINE}, {"json_schema", "tools"}),
        ({"llm_config": {"engine_kwargs": TOOL_ENGINE}}, {"json_schema", "tools"}),
        ({"engine_kwargs": TOOL_ENGINE, "capabilities": ["tools", "vision"]}, {"tools", "vision"}),
        ({"endpoint": {"base_url": "https://api.example.com/v1"}}, {"tools", "json_schema"}),
        ({"endpoint": {"base_url": "https://api.example.com/v1"}, "capabilities": []}, set()),
    ],
)
def test_expert_capabilities_follow_the_engine_settings_unless_configured(expert, abilities):
    cfg = AppConfig.parse(minimal(experts=[{"name": "a", "model": "m", **expert}]))
    assert cfg.experts[0].abilities == abilities


def test_llm_config_reaches_ray_serve_llm_merged_and_validated_by_it():
    from deployments.experts.vllm import LocalExpert, expert_llm_config

    expert = LocalExpert(
        name="a",
        model="builtin:tiny-llama",
        engine_kwargs={"max_model_len": 512},
        llm_config={
            "engine_kwargs": {"tool_call_parser": "hermes"},
            "lora_config": {
                "dynamic_lora_loading_path": "s3://bucket/loras",
                "max_num_adapters_per_replica": 2,
            },
            "log_engine_metrics": False,
        },
    )
    llm = expert_llm_config(expert)
    assert llm.engine_kwargs["max_model_len"] == 512 and llm.engine_kwargs["tool_call_parser"] == "hermes"
    assert llm.lora_config.max_num_adapters_per_replica == 2 and llm.log_engine_metrics is False


def test_a_wrong_llm_config_stops_the_start_naming_the_expert():
    from deployments.app import build_app

    bad = {"name": "a", "model": "builtin:tiny-llama", "llm_config": {"lora_confg": {}}}
    with pytest.raises(ConfigError, match="expert 'a': llm_config: LLMConfig says lora_confg: Extra inputs"):
        build_app(minimal(experts=[bad]))


def test_hub_models_may_download_local_ones_stay_offline():
    from deployments.experts.vllm import LocalExpert, expert_llm_config

    def env(model: str) -> dict:
        return expert_llm_config(LocalExpert(name="a", model=model)).runtime_env["env_vars"]

    assert env("builtin:tiny-llama")["HF_HUB_OFFLINE"] == "1"
    assert "HF_HUB_OFFLINE" not in env("meta-llama/Llama-3.1-8B-Instruct")


def test_the_gpu_config_turns_tools_on_for_the_models_that_call_tools():
    cfg = load_serve_config(REPO / "configs/gpu_cluster.yaml")
    tools = {e.name for e in cfg.experts if "tools" in e.abilities}
    assert tools == {"general", "code"}


def test_placement_resources_reach_the_expert_bundle_and_the_router_replicas():
    from deployments.app import build_app
    from deployments.experts.vllm import LocalExpert, expert_llm_config

    cpu = LocalExpert(name="a", model="builtin:tiny-llama", resources={"expert_node": 1})
    assert expert_llm_config(cpu).placement_group_config == {"bundles": [{"CPU": 0.5, "expert_node": 1}]}
    gpu = LocalExpert(name="g", model="org/model", accelerator="gpu", resources={"expert_node": 1})
    assert expert_llm_config(gpu).placement_group_config["bundle_per_worker"] == {"GPU": 1, "expert_node": 1}

    remote = {"name": "r", "model": "m", "endpoint": {"base_url": "http://127.0.0.1:9/v1"}}
    ingress = {"resources": {"router_node": 1}, "max_replicas_per_node": 1}
    router = build_app(minimal(experts=[remote], ingress=ingress))._bound_deployment._replica_config
    assert router.ray_actor_options["resources"] == {"router_node": 1}
    assert router.max_replicas_per_node == 1


CONFIG_STARTS = {
    AppConfig: {"experts": [{"name": "a", "model": "m"}]},
    LocalExpert: {"name": "a", "model": "m"},
    RemoteExpert: {"name": "a", "model": "m", "endpoint": {"base_url": "http://127.0.0.1:9/v1"}},
    AdapterExpert: {"name": "b", "model": "m", "base": "a"},
    RemoteEndpoint: {"base_url": "http://127.0.0.1:9/v1"},
}
"""The least each model needs, for entering its fields."""


def test_every_config_field_of_every_json_type_is_valid_or_a_config_error_naming_its_place():
    """Each field of AppConfig at any depth (read from the models) x each JSON type, checked as the
    app's start checks it (the models, the policy, each expert's LLMConfig): the config passes, or
    a ConfigError names the place or the object holding it; never another exception."""
    from deployments.app import check_config

    failures, cases = [], 0
    base = CONFIG_STARTS[AppConfig]
    for place in config_places(AppConfig, base, CONFIG_STARTS):
        path = field_path(place)
        for value in JSON_VALUES:
            cases += 1
            args = set_at(base, place, value, CONFIG_STARTS, AppConfig)
            try:
                check_config(args)
            except ConfigError as exc:
                named = [line.strip().split(":")[0] for line in str(exc).splitlines()[1:]]
                if not any(path.startswith(where) or where.startswith(path) for where in named):
                    failures.append(f"{path}={value!r}: {str(exc)!r}")
            except Exception as exc:
                failures.append(f"{path}={value!r}: {type(exc).__name__}: {exc}")
    assert not failures, f"{len(failures)} of {cases} configs:\n" + "\n".join(failures[:40])


def test_every_policy_arg_of_every_json_type_is_valid_or_a_config_error_naming_the_policy():
    """Policies take free-form ``args``: each argument of each policy (read from its signature; the
    trained kinds on the shipped artifact) x each JSON type is a ConfigError at ``policy``, or valid."""
    import inspect

    from deployments.app import check_config
    from router.policy import _REGISTRY
    from router.trained import TrainedPolicy

    shipped_config = load_serve_config(REPO / "serve_config.yaml")
    shipped, experts = shipped_config.policy, [{"name": n, "model": "m"} for n in shipped_config.expert_names]
    failures, cases = [], 0
    for name, factory in _REGISTRY.items():
        trained = name == shipped.name
        if not (trained or isinstance(factory, type)):
            continue  # the other trained kinds share TrainedPolicy's arguments
        start = dict(shipped.args) if trained else {"expert": "a"} if name == "fixed" else {}
        if trained:
            check_config({"experts": experts, "policy": shipped.model_dump()})  # the start is valid
        signature = inspect.signature(TrainedPolicy if trained else factory)
        for arg in [p for p in signature.parameters if p != "experts"]:
            for value in JSON_VALUES:
                cases += 1
                policy = {"name": name, "args": {**start, arg: value}}
                args = {
                    "experts": experts if trained else CONFIG_STARTS[AppConfig]["experts"],
                    "policy": policy,
                }
                try:
                    check_config(args)
                except ConfigError as exc:
                    if "\n  policy" not in str(exc):
                        failures.append(f"{name}.{arg}={value!r}: {exc}")
                except Exception as exc:
                    failures.append(f"{name}.{arg}={value!r}: {type(exc).__name__}: {exc}")
    assert cases and not failures, f"{len(failures)} of {cases}:\n" + "\n".join(failures[:40])


@pytest.mark.parametrize(
    "text, where",
    [
        (
            "applications: [{args: {experts: [{name: a, model: m, price: {input_per_1m: cheap}}]}}]",
            "experts[0].price.input_per_1m",
        ),
        ("applications: [{args: {experts: 5}}]", "experts: Input should be a valid list"),
        (
            "applications: [{args: {experts: [{name: a, model: m}], policy: {name: cluster, args: {x: 5}}}}]",
            "policy:",
        ),
        ("applications: 5", "'applications' must be a list"),
        ("[1, 2]", "'applications' must be a list"),
        ("applications: [{args: {", "cannot read a YAML document"),
    ],
)
def test_serving_a_config_of_the_wrong_shape_stops_with_the_place_not_a_traceback(
    tmp_path, capsys, text, where
):
    """``make serve`` (``ops.launch``) checks the config before it starts ``serve run``."""
    from ops.launch import serve_until_stopped

    path = tmp_path / "serve.yaml"
    path.write_text(text + "\n")
    assert serve_until_stopped(str(path)) == 2
    assert where in capsys.readouterr().err


def test_the_configuration_reference_is_generated_from_the_models():
    from ops.config_reference import reference

    written = (REPO / "docs" / "configuration.md").read_text()
    assert written == reference(), (
        "stale: run .venv/bin/python -m ops.config_reference > docs/configuration.md"
    )


def _doc_yaml_blocks():
    import re

    for path in [REPO / "README.md", REPO / "k8s" / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for i, match in enumerate(re.finditer(r"```yaml\n(.*?)```", path.read_text(), re.S)):
            yield pytest.param(match.group(1), id=f"{path.relative_to(REPO)}#{i}")


@pytest.mark.parametrize("block", list(_doc_yaml_blocks()))
def test_every_config_example_in_the_docs_validates(block, tmp_path):
    """A whole Serve config validates as the app's; a fragment (its first line says so) validates
    as the part of one it shows: args.experts entries, policy, ingress, or the router's user_config."""
    import yaml

    from router.config import IngressConfig, PolicyConfig, RouterUserConfig

    doc = yaml.safe_load(block)
    if isinstance(doc, dict) and "applications" in doc:
        (tmp_path / "serve.yaml").write_text(block)
        load_serve_config(tmp_path / "serve.yaml")
        return
    assert block.lstrip().startswith("# fragment"), "a partial config's first line is '# fragment: ...'"
    experts = doc if isinstance(doc, list) else doc.get("experts", [])
    for expert in experts:
        EXPERT.validate_python(expert)
    if any("base" in expert for expert in experts):  # adapters name their base among the others
        AppConfig.model_validate({"experts": experts})
    parts = {"policy": PolicyConfig, "ingress": IngressConfig}
    for key, model in parts.items():
        if isinstance(doc, dict) and key in doc:
            model.model_validate(doc[key])
    for deployment in doc.get("deployments", []) if isinstance(doc, dict) else []:
        if "user_config" in deployment:
            RouterUserConfig.model_validate(deployment["user_config"])
    known = {"experts", "deployments", *parts}
    assert isinstance(doc, list) or set(doc) <= known, f"a fragment of what? {sorted(doc)}"


def test_lora_adapter_experts_run_on_their_base_engine():
    from deployments.app import check_config
    from deployments.experts import deployment
    from deployments.experts.vllm import expert_llm_config

    tools = {"enable_auto_tool_choice": True, "tool_call_parser": "hermes"}
    args = minimal(
        experts=[
            {"name": "base", "model": "builtin:tiny-llama", "engine_kwargs": tools},
            {
                "name": "tutor",
                "model": "builtin:tiny-llama-lora-a",
                "base": "base",
                "price": {"input_per_1m": 1},
            },
            {"name": "poet", "model": "builtin:tiny-llama-lora-b", "base": "base", "capabilities": []},
            {"name": "far", "model": "m", "endpoint": {"base_url": "https://example.com/v1"}},
        ]
    )
    config = check_config(args)
    assert [e.kind for e in config.experts] == ["vllm", "lora", "lora", "remote"]
    answering = [deployment(e, config) for e in config.experts]
    assert answering == ["expert:base"] * 3 + [None]  # one engine serves three experts
    assert [config.serving(e).name for e in ("base", "tutor", "poet")] == ["base"] * 3
    kwargs = expert_llm_config(config.expert("base"), config.adapters("base")).engine_kwargs
    assert kwargs["enable_lora"] and kwargs["max_loras"] == 2 and kwargs["max_lora_rank"] == 8  # rank 4
    assert [(m.name, Path(m.path).name) for m in kwargs["lora_modules"]] == [
        ("tutor", "tiny-llama-lora-a"),
        ("poet", "tiny-llama-lora-b"),
    ]
    assert config.serving("tutor").name == "base" and config.serving("far") is None  # remote: no engine
    assert config.abilities("tutor") == {"tools", "json_schema"}  # its engine's
    assert config.abilities("poet") == frozenset()  # its own, when it says


@pytest.mark.parametrize(
    "adapter, message",
    [
        (
            {"base": "nobody"},
            "base 'nobody' must name a local (vLLM) expert of this app; local experts: base",
        ),
        ({"base": "far"}, "base 'far' must name a local (vLLM) expert"),
        ({"base": "tutor"}, "base 'tutor' must name a local (vLLM) expert"),
        (
            {"base": "base", "engine_kwargs": {"max_num_seqs": 4}},
            "set engine_kwargs on expert 'base' instead",
        ),
        ({"base": "base", "num_cpus": 2, "autoscaling": {"max_replicas": 3}}, "set num_cpus, autoscaling on"),
        ({"base": "base", "endpoint": {"base_url": "https://x.org"}}, "Extra inputs are not permitted"),
        (
            {"base": "base", "capabilities": ["tools"]},
            "capabilities 'tools' needs its base 'base' to parse tool",
        ),
    ],
)
def test_a_lora_adapter_expert_needs_a_local_base_and_no_engine_of_its_own(adapter, message):
    experts = [
        {"name": "base", "model": "builtin:tiny-llama"},
        {"name": "far", "model": "m", "endpoint": {"base_url": "https://example.com/v1"}},
        {"name": "tutor", "model": "builtin:tiny-llama-lora-a", "base": "base"},
        {"name": "new", "model": "builtin:tiny-llama-lora-b", **adapter},
    ]
    with pytest.raises(ConfigError) as caught:
        AppConfig.parse(minimal(experts=experts))
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "expert, kind, message",
    [
        ({}, "vllm", None),
        ({"kind": "vllm", "num_cpus": 1}, "vllm", None),
        ({"endpoint": {"base_url": "https://example.com/v1"}}, "remote", None),
        ({"kind": "remote", "endpoint": {"base_url": "https://example.com/v1"}}, "remote", None),
        ({"kind": "lora", "base": "base"}, "lora", None),
        ({"kind": "remote"}, None, "experts[1].endpoint: Field required"),
        ({"kind": "lora"}, None, "experts[1].base: Field required"),
        ({"kind": "cloud"}, None, "experts[1]: kind must be one of vllm, remote, lora"),
        ({"kind": 5}, None, "experts[1]: kind must be one of vllm, remote, lora"),
        ({"kind": "vllm", "base": "base"}, None, "experts[1].base: Extra inputs are not permitted"),
        (
            {"endpoint": {"base_url": "https://example.com/v1"}, "num_gpus": 1},
            None,
            "experts[1].num_gpus: Extra inputs are not permitted",  # a remote expert has no engine
        ),
    ],
)
def test_an_experts_kind_is_declared_or_implied_and_selects_the_fields_it_may_have(expert, kind, message):
    experts = [{"name": "base", "model": "builtin:tiny-llama"}, {"name": "x", "model": "m", **expert}]
    if message is None:
        assert AppConfig.parse(minimal(experts=experts)).expert("x").kind == kind
        return
    with pytest.raises(ConfigError) as caught:
        AppConfig.parse(minimal(experts=experts))
    assert message in str(caught.value)


def test_phase1_fingerprints_are_the_same_as_before_the_expert_kinds_had_models_of_their_own():
    """Rows of a phase-1 table are reused while their expert's fingerprint holds; these values were
    printed by the code before expert kinds became a union (a7b2a4a), so existing tables stay valid."""
    from training.generate import expert_fingerprint

    config = AppConfig.parse(
        {
            "experts": [
                {
                    "name": "a",
                    "model": "builtin:tiny-llama",
                    "engine_kwargs": {"max_model_len": 512},
                    "system_prompt": "Be brief.",
                },
                {"name": "b", "model": "builtin:tiny-llama-lora-a", "base": "a"},
                {
                    "name": "c",
                    "model": "gpt",
                    "endpoint": {"base_url": "https://x.org/v1"},
                    "sampling": {"temperature": 0.2},
                },
            ]
        }
    )
    assert {e.name: expert_fingerprint(e, config) for e in config.experts} == {
        "a": "a5018661a04397a9",
        "b": "0d253e4fb918c58b",
        "c": "5967a7dc52f7302b",
    }


def test_the_apps_import_path_is_a_builder_serve_accepts():
    """Serve calls ``import_path`` with the config's args and refuses a builder taking more than one
    parameter (``ray.serve._private.api.call_user_app_builder_with_args_if_necessary``)."""
    import inspect

    from deployments.app import build_app

    assert len(inspect.signature(build_app).parameters) == 1
