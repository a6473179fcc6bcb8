"""The KubeRay manifests in k8s/, offline: CRD schemas, Serve config, resources, security, drift."""

from __future__ import annotations

import ast
import importlib.util
import re
import shlex
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from deployments.config import AppConfig, load_serve_config
from deployments.experts.vllm import LocalExpert
from ops.kuberay import CONFIG_DIR, GPU_RESOURCE, Options, main, render
from router.config import ConfigError
from tests.conftest import REPO, SHARED_DATA

SCHEMAS = SHARED_DATA.parent / "k8s-schemas"
K8S = REPO / "k8s"
CONFIG = REPO / "configs" / "gpu_cluster.yaml"
CRD_FILES = {
    "RayService": "ray.io_rayservices.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayCluster": "ray.io_rayclusters.yaml",
}
MANIFESTS = {p.name: yaml.safe_load(p.read_text()) for p in sorted(K8S.glob("*.yaml"))}
SERVICE = MANIFESTS.get("rayservice.yaml", {})
JOBS = {name: doc for name, doc in MANIFESTS.items() if doc.get("kind") == "RayJob"}
APP = load_serve_config(CONFIG)
PORT = yaml.safe_load(CONFIG.read_text())["http_options"]["port"]


def strict(schema: Any) -> Any:
    """The schema with unknown fields rejected: the API server prunes them silently (a typo such as
    ``serveConfigv2`` would vanish), so reject them here where they can be seen."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    open_ = "additionalProperties" in out or out.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in out and not open_:
        out["additionalProperties"] = False
    return out


@cache
def crd_schema(kind: str, version: str) -> dict[str, Any]:
    """``openAPIV3Schema`` of ``kind`` at ``version`` from the KubeRay CRDs in ../shared/k8s-schemas."""
    path = SCHEMAS / CRD_FILES[kind]
    if not path.is_file():
        pytest.fail(f"KubeRay CRD {path} not found: the shared k8s-schemas folder must sit beside the repo")
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return strict(v["schema"]["openAPIV3Schema"])
    pytest.fail(f"{path.name} has no version {version}")


def schema_errors(doc: dict[str, Any]) -> list[str]:
    """Every CRD schema violation of a KubeRay object, one line each."""
    group, version = doc["apiVersion"].split("/")
    assert group == "ray.io", doc["apiVersion"]
    validator = jsonschema.Draft7Validator(crd_schema(doc["kind"], version))
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def nulls(value: Any, where: str = "") -> Iterator[str]:
    """Paths of null values (Kubernetes drops them; the schema check would not see them)."""
    if value is None:
        yield where
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from nulls(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from nulls(v, f"{where}[{i}]")


def clusters() -> dict[str, dict[str, Any]]:
    """The RayCluster spec of every manifest that has one."""
    specs = {"rayservice.yaml": SERVICE["spec"]["rayClusterConfig"]}
    return specs | {name: job["spec"]["rayClusterSpec"] for name, job in JOBS.items()}


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod spec) of every pod template: heads, worker groups, job submitters."""
    for name, cluster in clusters().items():
        yield f"{name} head", cluster["headGroupSpec"]["template"]["spec"]
        for group in cluster["workerGroupSpecs"]:
            yield f"{name} {group['groupName']}", group["template"]["spec"]
    for name, job in JOBS.items():
        yield f"{name} submitter", job["spec"]["submitterPodTemplate"]["spec"]


def group(cluster: dict[str, Any], name: str) -> dict[str, Any]:
    return next(g for g in cluster["workerGroupSpecs"] if g["groupName"] == name)


def flags(command: str) -> dict[str, str]:
    """``--flag value`` pairs of a command line (a bare flag maps to '')."""
    words = shlex.split(command)
    pairs = zip(words, words[1:] + [""])
    return {w: "" if after.startswith("--") else after for w, after in pairs if w.startswith("--")}


def test_the_manifests_are_all_there():
    assert sorted(MANIFESTS) == [
        "configmap.yaml",
        "pvc.yaml",
        "rayjob-generate.yaml",
        "rayjob-train.yaml",
        "rayservice.yaml",
    ]


@pytest.mark.parametrize("name", ["rayservice.yaml", "rayjob-generate.yaml", "rayjob-train.yaml"])
def test_kuberay_objects_validate_against_the_crd_schemas(name):
    doc = MANIFESTS[name]
    assert schema_errors(doc) == []
    assert list(nulls(doc)) == []


def test_the_schema_check_catches_typos_and_wrong_types():
    typo = {**SERVICE, "spec": {**SERVICE["spec"], "serveConfigv2": "x"}}
    assert any("serveConfigv2" in e for e in schema_errors(typo))
    groups = [{**g, "minReplicas": "1"} for g in SERVICE["spec"]["rayClusterConfig"]["workerGroupSpecs"]]
    cluster = {**SERVICE["spec"]["rayClusterConfig"], "workerGroupSpecs": groups}
    wrong = {**SERVICE, "spec": {**SERVICE["spec"], "rayClusterConfig": cluster}}
    assert any("minReplicas: '1' is not of type 'integer'" in e for e in schema_errors(wrong))


def test_the_operator_rules_beyond_the_schema_hold():
    """Checks the KubeRay operator makes at admission (ray-operator/controllers/ray/utils/validation.go)."""
    dns1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
    for name in ("rayservice.yaml", *JOBS):
        assert (
            dns1035.match(MANIFESTS[name]["metadata"]["name"])
            and len(MANIFESTS[name]["metadata"]["name"]) <= 47
        )
    for name, cluster in clusters().items():
        assert tuple(map(int, cluster["rayVersion"].split("."))) >= (2, 52, 0)  # token auth needs Ray 2.52
        for g in [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]:
            # resources either in rayStartParams or in the group's `resources`, never both
            assert not {"num-cpus", "num-gpus", "memory", "resources"} & set(g["rayStartParams"]), name
    assert SERVICE["spec"]["upgradeStrategy"]["type"] in {
        "NewCluster",
        "NewClusterWithIncrementalUpgrade",
        "None",
    }
    for job in JOBS.values():
        assert job["spec"]["shutdownAfterJobFinishes"] or not job["spec"].get("ttlSecondsAfterFinished")
        assert job["spec"]["submissionMode"] == "K8sJobMode"


def test_the_plain_kubernetes_objects_are_well_formed():
    """No core Kubernetes schema is at hand: the claim is checked against the PersistentVolumeClaimSpec
    that the RayCluster CRD embeds (ephemeral volumes), the ConfigMap structurally."""
    claim, config_map = MANIFESTS["pvc.yaml"], MANIFESTS["configmap.yaml"]
    for doc, kind in ((claim, "PersistentVolumeClaim"), (config_map, "ConfigMap")):
        assert (doc["apiVersion"], doc["kind"]) == ("v1", kind)
        assert doc["metadata"]["name"] and set(doc) <= {"apiVersion", "kind", "metadata", "spec", "data"}
    pod = crd_schema("RayCluster", "v1")["properties"]["spec"]["properties"]["headGroupSpec"]
    volume = pod["properties"]["template"]["properties"]["spec"]["properties"]["volumes"]["items"]
    claim_spec = volume["properties"]["ephemeral"]["properties"]["volumeClaimTemplate"]["properties"]["spec"]
    jsonschema.validate(claim["spec"], claim_spec, cls=jsonschema.Draft7Validator)
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # pods on many nodes mount it
    assert claim["spec"]["resources"]["requests"]["storage"]
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in config_map["data"].items())
    for where, spec in pod_specs():
        for v in spec.get("volumes", []):
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"], where
            if "configMap" in v:
                assert v["configMap"]["name"] == config_map["metadata"]["name"], where


def test_serve_config_v2_is_the_gpu_config_and_a_valid_serve_config():
    from ray.serve.schema import ServeDeploySchema

    doc = yaml.safe_load(SERVICE["spec"]["serveConfigV2"])
    assert doc == yaml.safe_load(CONFIG.read_text())
    ServeDeploySchema.model_validate(doc)
    for app in doc["applications"]:
        module, attr = app["import_path"].split(":")
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin, module
        tree = ast.parse(Path(spec.origin).read_text())
        assert attr in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, app["import_path"]
        config = AppConfig.parse(app["args"])
        assert sorted(config.expert_names) == sorted(APP.expert_names)


def test_the_jobs_use_the_same_expert_definitions_and_artifacts():
    config_map = MANIFESTS["configmap.yaml"]
    assert config_map["data"] == {CONFIG.name: CONFIG.read_text()}
    generate = flags(JOBS["rayjob-generate.yaml"]["spec"]["entrypoint"])
    train = flags(JOBS["rayjob-train.yaml"]["spec"]["entrypoint"])
    assert JOBS["rayjob-generate.yaml"]["spec"]["entrypoint"].startswith("expert-router generate ")
    assert JOBS["rayjob-train.yaml"]["spec"]["entrypoint"].startswith("expert-router train ")
    assert generate["--config"] == f"{CONFIG_DIR}/{CONFIG.name}"
    assert generate["--out"] == train["--table"]
    assert train["--router"] == "bert" and "--gpu" in train
    artifacts = [generate["--data"], generate["--out"], train["--out"]]
    for name, job in JOBS.items():
        cluster = job["spec"]["rayClusterSpec"]
        templates = [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]
        for container in (t["template"]["spec"]["containers"][0] for t in templates):
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts.get(CONFIG_DIR) == "config", name
            assert all(any(p.startswith(m + "/") for m in mounts) for p in artifacts), (name, mounts)
    gpu = group(JOBS["rayjob-train.yaml"]["spec"]["rayClusterSpec"], "gpu")
    assert int(train["--workers"]) <= gpu["maxReplicas"] * int(gpu["resources"]["GPU"])


def test_the_train_entrypoint_parses_with_the_cli():
    from training.cli import parser

    args = parser().parse_args(shlex.split(JOBS["rayjob-train.yaml"]["spec"]["entrypoint"])[1:])
    assert (args.command, args.router, args.gpu) == ("train", "bert", True)


def test_the_generate_entrypoint_parses_with_the_cli():
    from training.cli import parser

    words = shlex.split(JOBS["rayjob-generate.yaml"]["spec"]["entrypoint"])[1:]
    if "generate" not in parser().format_usage():
        pytest.xfail("`expert-router generate` is not in training/cli.py yet")
    assert parser().parse_args(words).command == "generate"


def test_an_experts_replica_gpus_are_what_ray_serve_llm_reserves():
    """The sizing rule against the placement bundles ray.serve.llm builds for the experts (imports vLLM)."""
    from deployments.experts.vllm import expert_llm_config

    shapes = [
        {"engine_kwargs": {"tensor_parallel_size": 2}},
        {"num_gpus": 0.5},
        {"num_gpus": 1, "engine_kwargs": {"tensor_parallel_size": 2, "pipeline_parallel_size": 2}},
        {"llm_config": {"engine_kwargs": {"tensor_parallel_size": 4}}},
    ]
    experts = APP.experts + [LocalExpert(name="x", model="m", accelerator="gpu", **s) for s in shapes]
    for expert in experts:
        bundles = expert_llm_config(expert).get_engine_config().placement_bundles
        assert sum(b.get("GPU", 0) for b in bundles) == expert.replica.gpus, expert.name
        typed = {k for b in bundles for k in b if k.startswith("accelerator_type:")}
        assert typed == (
            {f"accelerator_type:{expert.accelerator_type}"} if expert.accelerator_type else set()
        )


@pytest.mark.parametrize("name", ["rayservice.yaml", "rayjob-generate.yaml", "rayjob-train.yaml"])
def test_every_expert_fits_one_gpu_worker_and_groups_agree_with_limits(name):
    cluster = clusters()[name]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["headGroupSpec"]["resources"] == {"CPU": "0"}  # the head runs no replicas
    gpu_experts = [e for e in APP.experts if e.accelerator == "gpu"]
    for g in cluster["workerGroupSpecs"]:
        res = g["template"]["spec"]["containers"][0]["resources"]
        assert res["requests"] == res["limits"], g["groupName"]
        limits, ray = res["limits"], g["resources"]
        assert ray["CPU"] == limits["cpu"] and ray.get("GPU") == limits.get(GPU_RESOURCE), g["groupName"]
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
    gpu, cpu = group(cluster, "gpu"), group(cluster, "cpu")
    gpus, cpus = int(gpu["resources"]["GPU"]), int(gpu["resources"]["CPU"])
    assert all(e.replica.gpus <= gpus and e.num_cpus <= cpus for e in gpu_experts)
    types = {f"accelerator_type:{e.accelerator_type}" for e in gpu_experts if e.accelerator_type}
    assert {k for k in gpu["resources"] if k.startswith("accelerator_type:")} == types
    assert GPU_RESOURCE not in cpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert APP.ingress.num_cpus <= int(cpu["resources"]["CPU"])
    if name == "rayservice.yaml":  # serving keeps the experts' minimum up and can reach their maximum
        assert gpu["minReplicas"] * gpus >= sum(
            e.autoscaling.min_replicas * e.replica.gpus for e in gpu_experts
        )
        assert gpu["maxReplicas"] * gpus >= sum(
            e.autoscaling.max_replicas * e.replica.gpus for e in gpu_experts
        )
    else:  # job clusters scale from zero
        assert gpu["minReplicas"] == cpu["minReplicas"] == 0


def test_router_replicas_are_spread_over_cpu_nodes_that_offer_their_resource():
    """The GPU config keeps two router replicas, one per CPU node (a node loss takes one): the CPU
    group offers the ingress's custom resource and keeps at least two pods."""
    cluster = SERVICE["spec"]["rayClusterConfig"]
    cpu, gpu = group(cluster, "cpu"), group(cluster, "gpu")
    ingress = APP.ingress
    assert ingress.autoscaling.min_replicas == 2 and ingress.max_replicas_per_node == 1
    assert set(ingress.resources) <= set(cpu["resources"])
    assert not set(ingress.resources) & set(gpu["resources"])
    assert cpu["minReplicas"] >= 2


def test_the_train_job_checkpoints_to_shared_storage():
    """A restarted worker on another node resumes from checkpoints on the shared claim."""
    assert "--storage-path /artifacts/" in MANIFESTS["rayjob-train.yaml"]["spec"]["entrypoint"]


def test_every_pod_runs_as_non_root():
    autoscalers = [c["autoscalerOptions"]["securityContext"] for c in clusters().values()]
    for where, spec in pod_specs():
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["runAsUser"] == 1000, where
        for container in spec["containers"]:
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False and ctx["runAsNonRoot"] is True, where
            assert ctx["runAsUser"] == 1000, where
    assert all(a["allowPrivilegeEscalation"] is False and a["runAsNonRoot"] for a in autoscalers)


def test_ray_containers_are_probed_and_serving_uses_the_config_port():
    service = SERVICE["spec"]["serveService"]["spec"]
    assert [p["port"] for p in service["ports"]] == [PORT]
    for name, cluster in clusters().items():
        head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert head["readinessProbe"]["httpGet"]["path"] == "/api/healthz", name
        assert {p["name"]: p["containerPort"] for p in head["ports"]}["serve"] == PORT, name
        for g in cluster["workerGroupSpecs"]:
            probe = g["template"]["spec"]["containers"][0]["readinessProbe"]
            if name == "rayservice.yaml":  # a worker takes traffic once its Serve proxy is healthy
                assert f"localhost:{PORT}/-/healthz" in probe["exec"]["command"][-1], g["groupName"]
            else:
                assert probe["httpGet"]["path"] == "/api/healthz", (name, g["groupName"])


def test_the_committed_manifests_are_rendered_from_the_config(tmp_path):
    main(["--config", str(CONFIG), "--out", str(tmp_path)])
    rendered = {p.name: p.read_text() for p in tmp_path.iterdir()}
    committed = {p.name: p.read_text() for p in K8S.glob("*.yaml")}
    stale = sorted(n for n in rendered.keys() | committed.keys() if rendered.get(n) != committed.get(n))
    assert not stale, f"k8s/ is stale: python -m ops.kuberay --out k8s/ (differs: {stale})"


def test_flags_change_the_rendering():
    files = render(CONFIG, Options(image="registry.example/er:1", gpus_per_worker=2, pvc="claim"))
    service = yaml.safe_load(files["rayservice.yaml"])["spec"]["rayClusterConfig"]
    gpu = group(service, "gpu")
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"][GPU_RESOURCE] == "2"
    assert gpu["template"]["spec"]["containers"][0]["image"] == "registry.example/er:1"
    assert gpu["minReplicas"] == 2  # three one-GPU minimum replicas on two-GPU workers
    assert yaml.safe_load(files["pvc.yaml"])["metadata"]["name"] == "claim"


def _config_with(tmp_path: Path, **changes: Any) -> Path:
    doc = yaml.safe_load(CONFIG.read_text())
    for key, value in changes.items():
        doc["applications"][0]["args"]["experts"][0][key] = value
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(
    "changes, opts, message",
    [
        ({"engine_kwargs": {"tensor_parallel_size": 4}}, Options(gpus_per_worker=2), "needing 4"),
        ({"accelerator_type": "H100"}, Options(), "several accelerator types (A100, H100)"),
        ({"num_cpus": 16}, Options(), "more than the 8 of a GPU worker"),
    ],
)
def test_the_generator_refuses_experts_that_do_not_fit(tmp_path, changes, opts, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        render(_config_with(tmp_path, **changes), opts)


def test_a_larger_expert_gets_larger_gpu_workers(tmp_path):
    files = render(_config_with(tmp_path, engine_kwargs={"tensor_parallel_size": 2}))
    gpu = group(yaml.safe_load(files["rayservice.yaml"])["spec"]["rayClusterConfig"], "gpu")
    assert gpu["resources"]["GPU"] == "2"


def test_the_image_build_context_holds_everything_the_dockerfile_copies():
    """The Dockerfile's dockerignore excludes everything, then re-includes paths: each COPY source is one."""
    dockerfile = (REPO / "k8s" / "Dockerfile").read_text()
    ignore = (REPO / "k8s" / "Dockerfile.dockerignore").read_text().splitlines()
    included = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    sources = [
        source
        for line in dockerfile.splitlines()
        if line.startswith("COPY ") and "--from" not in line
        for source in [w for w in line.split()[1:] if not w.startswith("--")][:-1]
    ]
    assert sources, "no COPY lines found"
    missing = [s for s in sources if not any(s == p or s.startswith(p + "/") for p in included)]
    assert not missing, f"COPY sources the build context leaves out: {missing}"
