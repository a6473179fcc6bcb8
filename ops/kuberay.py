"""Render the KubeRay manifests of a GPU serve config (``k8s/README.md``)::

    python -m ops.kuberay --config configs/gpu_cluster.yaml --out k8s/

Files written into ``--out``:

- ``rayservice.yaml``: the RayService; its ``serveConfigV2`` is the config file itself (one
  GPU-autoscaled ``expert:<name>`` deployment per expert, the router ingress on CPU);
- ``rayjob-generate.yaml`` / ``rayjob-train.yaml``: phase 1 (labelled table) and phase 2 (BERT router)
  on RayJob clusters of the same shape;
- ``configmap.yaml``: the config file, mounted into the jobs' pods, so both phases and serving use
  the same expert definitions;
- ``pvc.yaml``: the shared volume for the model cache, datasets, tables and router artifacts.

A GPU worker pod holds the largest expert replica, sized as ``deployments/experts/vllm.py`` places it.
Needs neither Ray nor vLLM.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from deployments.config import AppConfig, load_serve_config
from router.config import ConfigError, Replica

REPO = Path(__file__).resolve().parent.parent
RAY_VERSION = "2.60.0"
RAY_UID, RAY_GID = 1000, 100  # user `ray` (group `users`) of the rayproject/ray images
ARTIFACTS = "/artifacts"
CONFIG_DIR = "/etc/expert-router"
AGENT_PORT = 52365  # Ray dashboard agent: /api/healthz, /api/local_raylet_healthz
GPU_RESOURCE = "nvidia.com/gpu"
LABELS = {"app.kubernetes.io/name": "expert-router", "app.kubernetes.io/part-of": "expert-router"}


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Options:
    """Cluster settings that the serve config does not hold (one CLI flag each)."""

    name: str = _opt("expert-router", "name of the RayService; prefix of the other objects")
    image: str = _opt("expert-router:0.1.0", "image built from k8s/Dockerfile")
    gpus_per_worker: int | None = _opt(None, "GPUs per GPU worker pod (default: the largest expert)")
    gpu_min_workers: int | None = _opt(None, "GPU worker pods at least (default: the experts' min_replicas)")
    gpu_max_workers: int | None = _opt(None, "GPU worker pods at most (default: the experts' max_replicas)")
    gpu_worker_cpus: int = _opt(8, "CPUs per GPU worker pod")
    gpu_worker_memory: str = _opt("64Gi", "memory per GPU worker pod")
    cpu_min_workers: int = _opt(1, "CPU worker pods (router ingress, Ray Data) at least")
    cpu_max_workers: int = _opt(4, "CPU worker pods at most")
    cpu_worker_cpus: int = _opt(4, "CPUs per CPU worker pod")
    cpu_worker_memory: str = _opt("16Gi", "memory per CPU worker pod")
    head_cpus: int = _opt(4, "CPUs of the head pod (runs no tasks: Ray sees 0)")
    head_memory: str = _opt("16Gi", "memory of the head pod")
    pvc: str = _opt("expert-router-artifacts", "PersistentVolumeClaim mounted at /artifacts")
    pvc_size: str = _opt("200Gi", "size of the claim (models cache, tables, routers)")
    storage_class: str | None = _opt(None, "ReadWriteMany storage class (default: the cluster's)")
    data: str = _opt(f"{ARTIFACTS}/datasets/router_mix.jsonl.gz", "phase 1 --data: instructions")
    table: str = _opt(f"{ARTIFACTS}/tables/phase1.parquet", "phase 1 --out, phase 2 --table")
    router_dir: str = _opt(f"{ARTIFACTS}/routers/bert", "phase 2 --out: the router artifact")
    train_workers: int = _opt(2, "phase 2 --workers: Ray Train workers, one GPU each")


@dataclass(frozen=True)
class GpuGroup:
    """The GPU worker group the experts need."""

    gpus_per_worker: int
    min_workers: int
    max_workers: int
    accelerator_type: str | None


def gpu_group(config: AppConfig, opts: Options) -> GpuGroup:
    """Size the GPU worker group from the replicas of the experts' own deployments; ConfigError if
    they cannot fit it."""
    replicas = [r for e in config.experts if (r := e.replica) is not None and r.gpus]
    if not replicas:
        raise ConfigError("no GPU expert in the config: these manifests are for GPU clusters")
    types = sorted({r.accelerator_type for r in replicas if r.accelerator_type})
    if len(types) > 1:
        raise ConfigError(f"experts ask for several accelerator types ({', '.join(types)}): one GPU group")
    largest = math.ceil(max(r.gpus for r in replicas))
    per_worker = opts.gpus_per_worker or largest
    if per_worker < largest:
        raise ConfigError(f"a GPU worker with {per_worker} GPUs cannot hold an expert needing {largest}")

    def workers(count: Callable[[Replica], int]) -> int:
        return math.ceil(sum(count(r) * r.gpus for r in replicas) / per_worker)

    low = opts.gpu_min_workers
    low = workers(lambda r: r.min_replicas) if low is None else low
    high = opts.gpu_max_workers or max(
        workers(lambda r: r.max_replicas), math.ceil(opts.train_workers / per_worker), low, 1
    )
    if high < low:
        raise ConfigError(f"GPU workers: max {high} < min {low}")
    return GpuGroup(per_worker, low, high, types[0] if types else None)


def check_cpus(config: AppConfig, opts: Options) -> None:
    """ConfigError unless every replica fits the CPUs of the worker pods it runs on."""
    replicas = [r for e in config.experts if (r := e.replica) is not None]  # remote, LoRA: none
    on_gpu = [r.cpus for r in replicas if r.gpus]
    on_cpu = [config.ingress.num_cpus] + [r.cpus for r in replicas if not r.gpus]
    for needs, cpus, kind in ((on_gpu, opts.gpu_worker_cpus, "GPU"), (on_cpu, opts.cpu_worker_cpus, "CPU")):
        if needs and max(needs) > cpus:
            raise ConfigError(f"a replica needs {max(needs)} CPUs, more than the {cpus} of a {kind} worker")


def _resources(cpus: int, memory: str, gpus: int = 0) -> dict[str, Any]:
    amounts = {"cpu": str(cpus), "memory": memory, **({GPU_RESOURCE: str(gpus)} if gpus else {})}
    return {"requests": amounts, "limits": dict(amounts)}


def _readiness(serve_port: int | None) -> dict[str, Any]:
    """Ray's node health (raylet, and GCS on the head), as KubeRay checks it for Ray >= 2.53; a
    RayService worker is ready only once its Serve proxy answers too (KubeRay's serving check)."""
    if serve_port is None:
        action: dict[str, Any] = {"httpGet": {"path": "/api/healthz", "port": AGENT_PORT}}
    else:
        checks = (f"{AGENT_PORT}/api/local_raylet_healthz", f"{serve_port}/-/healthz")
        command = " && ".join(f"wget -T 2 -q -O- http://localhost:{c} | grep success" for c in checks)
        action = {"exec": {"command": ["bash", "-c", command]}}
    failures = 10 if serve_port is None else 1
    return {
        **action,
        "initialDelaySeconds": 10,
        "periodSeconds": 5,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "runAsUser": RAY_UID,
}
POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": RAY_UID,
    "runAsGroup": RAY_GID,
    "fsGroup": RAY_GID,
    "seccompProfile": {"type": "RuntimeDefault"},
}


@dataclass(frozen=True)
class Pod:
    """What differs between the pod templates of one cluster."""

    container: str
    cpus: int
    memory: str
    gpus: int = 0
    ports: dict[str, int] = field(default_factory=dict)
    readiness_port: int | None = None  # Serve port a RayService worker must answer on


def _template(pod: Pod, opts: Options, config_map: str | None) -> dict[str, Any]:
    """A pod template: non-root, the artifacts claim at /artifacts, the config at CONFIG_DIR (jobs)."""
    mounts = [{"name": "artifacts", "mountPath": ARTIFACTS}]
    volumes: list[dict[str, Any]] = [{"name": "artifacts", "persistentVolumeClaim": {"claimName": opts.pvc}}]
    if config_map:
        mounts.append({"name": "config", "mountPath": CONFIG_DIR, "readOnly": True})
        volumes.append({"name": "config", "configMap": {"name": config_map}})
    token = {"secretKeyRef": {"name": "hf-token", "key": "token", "optional": True}}
    container = {
        "name": pod.container,
        "image": opts.image,
        "env": [
            {"name": "HF_HOME", "value": f"{ARTIFACTS}/huggingface"},
            {"name": "HF_TOKEN", "valueFrom": token},
        ],
        "ports": [{"name": n, "containerPort": p} for n, p in pod.ports.items()],
        "resources": _resources(pod.cpus, pod.memory, pod.gpus),
        "readinessProbe": _readiness(pod.readiness_port),
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": mounts,
    }
    spec: dict[str, Any] = {"securityContext": POD_SECURITY, "containers": [container], "volumes": volumes}
    if pod.gpus:
        spec["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    return {"metadata": {"labels": LABELS}, "spec": spec}


def cpu_min_workers(config: AppConfig, opts: Options) -> int:
    """CPU worker pods at least: as asked, and enough for the router's minimum replicas when they
    are spread (``ingress.max_replicas_per_node``)."""
    ingress = config.ingress
    per_node = ingress.max_replicas_per_node
    spread = math.ceil(ingress.autoscaling.min_replicas / per_node) if per_node else 0
    return max(opts.cpu_min_workers, spread)


NODE_RESOURCE_CAPACITY = "1000"
"""What a worker pod offers of each custom resource the config's replicas ask for: enough that the
resource acts as a node label (placement), while CPUs/GPUs bound how many replicas fit."""


def advertised(requests: list[dict[str, float]]) -> dict[str, str]:
    """The custom resources a worker group offers so that replicas asking for ``requests`` land on it."""
    return {name: NODE_RESOURCE_CAPACITY for request in requests for name in request}


def cluster_spec(
    config: AppConfig, opts: Options, serve_port: int, serving: bool, config_map: str | None = None
) -> dict[str, Any]:
    """The RayCluster spec: a head that runs no tasks, CPU workers, GPU workers (both autoscaled).

    Serving keeps the workers the experts' ``min_replicas`` need; a job's cluster scales from zero.
    """
    gpu = gpu_group(config, opts)
    check_cpus(config, opts)
    probe = serve_port if serving else None
    serve = {"serve": serve_port}  # the port KubeRay's serving Service and proxy checks look up by name
    head_ports = {"gcs-server": 6379, "dashboard": 8265, "client": 10001, **serve}
    head = Pod("ray-head", opts.head_cpus, opts.head_memory, ports=head_ports)
    cpu = Pod("ray-worker", opts.cpu_worker_cpus, opts.cpu_worker_memory, 0, serve, probe)
    gpu_pod = Pod(
        "ray-worker", opts.gpu_worker_cpus, opts.gpu_worker_memory, gpu.gpus_per_worker, serve, probe
    )
    accelerator = {f"accelerator_type:{gpu.accelerator_type}": "1"} if gpu.accelerator_type else {}
    replicas = [r for e in config.experts if (r := e.replica) is not None]
    router_labels = advertised([config.ingress.resources, *(r.resources for r in replicas if not r.gpus)])
    expert_labels = advertised([r.resources for r in replicas if r.gpus])

    def group(name: str, pod: Pod, low: int, high: int, extra: dict[str, str]) -> dict[str, Any]:
        resources = {"CPU": str(pod.cpus), **({"GPU": str(pod.gpus)} if pod.gpus else {}), **extra}
        low = low if serving else 0
        return {
            "groupName": name,
            "minReplicas": low,
            "maxReplicas": high,
            "replicas": low,
            "rayStartParams": {},
            "resources": resources,
            "template": _template(pod, opts, config_map),
        }

    return {
        "rayVersion": RAY_VERSION,
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {
            "upscalingMode": "Default",
            "idleTimeoutSeconds": 300,
            "resources": _resources(1, "1Gi"),
            "securityContext": CONTAINER_SECURITY,
        },
        "authOptions": {"mode": "token"},
        "headGroupSpec": {
            "rayStartParams": {"dashboard-host": "0.0.0.0"},
            "resources": {"CPU": "0"},
            "template": _template(head, opts, config_map),
        },
        "workerGroupSpecs": [
            group("cpu", cpu, cpu_min_workers(config, opts), opts.cpu_max_workers, router_labels),
            group("gpu", gpu_pod, gpu.min_workers, gpu.max_workers, {**accelerator, **expert_labels}),
        ],
    }


def _metadata(name: str, component: str) -> dict[str, Any]:
    return {"name": name, "labels": {**LABELS, "app.kubernetes.io/component": component}}


def _rayjob(name: str, entrypoint: str, cluster: dict[str, Any], opts: Options) -> dict[str, Any]:
    """A RayJob on its own cluster, deleted 10 minutes after the job ends; one retry (phase 1 resumes
    from the parts it already wrote)."""
    submitter = {
        "name": "ray-job-submitter",
        "image": opts.image,
        "resources": _resources(1, "1Gi"),
        "securityContext": CONTAINER_SECURITY,
    }
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": _metadata(name, "job"),
        "spec": {
            "entrypoint": entrypoint,
            "submissionMode": "K8sJobMode",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 600,
            "backoffLimit": 1,
            "submitterPodTemplate": {
                "metadata": {"labels": LABELS},
                "spec": {
                    "securityContext": POD_SECURITY,
                    "restartPolicy": "Never",
                    "containers": [submitter],
                },
            },
            "rayClusterSpec": cluster,
        },
    }


def serve_port(doc: dict[str, Any]) -> int:
    """The HTTP port of a Serve config; ConfigError unless Serve listens on all interfaces."""
    http = doc.get("http_options") or {}
    if http.get("host") != "0.0.0.0":
        raise ConfigError("http_options.host must be 0.0.0.0: in Kubernetes Serve is reached from other pods")
    return int(http.get("port", 8000))


def rayservice(config: AppConfig, text: str, port: int, opts: Options) -> dict[str, Any]:
    """The RayService: ``serveConfigV2`` is the config file, served at ``port`` by ``<name>-serve``."""
    service_port = {"name": "serve", "port": port, "targetPort": port}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": _metadata(opts.name, "serving"),
        "spec": {
            "upgradeStrategy": {"type": "NewCluster"},
            "serveService": {
                "metadata": {"name": f"{opts.name}-serve", "labels": LABELS},
                "spec": {"type": "ClusterIP", "ports": [service_port]},
            },
            "serveConfigV2": text,
            "rayClusterConfig": cluster_spec(config, opts, port, serving=True),
        },
    }


def entrypoints(config_file: str, opts: Options) -> dict[str, str]:
    """The command of each phase (``training/cli.py``), reading and writing on the artifacts claim."""
    return {
        "generate": f"expert-router generate --config {CONFIG_DIR}/{config_file} --data {opts.data}"
        f" --out {opts.table}",
        "train": f"expert-router train --table {opts.table} --router bert --out {opts.router_dir}"
        f" --workers {opts.train_workers} --gpu --storage-path {ARTIFACTS}/ray-train",
    }


def pvc(opts: Options) -> dict[str, Any]:
    """The artifacts claim: ReadWriteMany, as every pod of a cluster mounts it."""
    claim: dict[str, Any] = {
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": opts.pvc_size}},
    }
    if opts.storage_class:
        claim["storageClassName"] = opts.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(opts.pvc, "storage"),
        "spec": claim,
    }


def render(config_path: Path, opts: Options = Options()) -> dict[str, str]:
    """The manifests of ``config_path``: file name -> YAML text."""
    text = config_path.read_text()
    config = load_serve_config(config_path)
    port = serve_port(yaml.safe_load(text))
    config_map = f"{opts.name}-config"
    job_cluster = cluster_spec(config, opts, port, serving=False, config_map=config_map)
    objects = {
        "rayservice.yaml": rayservice(config, text, port, opts),
        **{
            f"rayjob-{phase}.yaml": _rayjob(f"{opts.name}-{phase}", command, job_cluster, opts)
            for phase, command in entrypoints(config_path.name, opts).items()
        },
        "configmap.yaml": {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _metadata(config_map, "config"),
            "data": {config_path.name: text},
        },
        "pvc.yaml": pvc(opts),
    }
    source = config_path.resolve()
    shown = source.relative_to(REPO) if source.is_relative_to(REPO) else Path(config_path.name)
    header = (
        f"# Generated from {shown} by `python -m ops.kuberay`: do not edit by hand;\n"
        "# change the config or the flags and render again (k8s/README.md).\n"
    )
    return {name: header + to_yaml(obj) for name, obj in objects.items()}


class _Dumper(yaml.SafeDumper):
    """Block style, multi-line strings as literal blocks, no anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _str)


def to_yaml(obj: dict[str, Any]) -> str:
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=4096)


def write(config_path: Path, out: Path, opts: Options = Options()) -> list[Path]:
    """Render into ``out``; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render(config_path, opts).items():
        (out / name).write_text(text)
        written.append(out / name)
    return written


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m ops.kuberay", description="Render the KubeRay manifests of a config."
    )
    p.add_argument("--config", type=Path, default=REPO / "configs/gpu_cluster.yaml", help="Ray Serve config")
    p.add_argument("--out", type=Path, default=REPO / "k8s", help="folder for the manifests")
    for f in fields(Options):
        kind = int if str(f.type).startswith("int") else str
        p.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default, help=f.metadata["help"])
    args = p.parse_args(argv)
    opts = Options(**{f.name: getattr(args, f.name) for f in fields(Options)})
    for path in write(args.config, args.out, opts):
        print(path)


if __name__ == "__main__":
    main()
