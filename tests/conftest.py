"""Shared fixtures. End-to-end fixtures start real Ray + Serve + vLLM (CPU) and speak HTTP."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Keep Ray quiet, offline and out of the way of other clusters on this machine.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# A Ray API touched after a fixture's ray.shutdown() (e.g. a DeploymentHandle's metrics thread) must
# not silently start a new cluster in the test process.
os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The multi-node scenarios run last: they stop the session's cluster to start their own."""
    items.sort(key=lambda item: item.get_closest_marker("multinode") is not None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeCluster:
    """The session's one local Ray cluster with Serve, started by the first e2e module that asks.
    Each module deploys its own apps on it (:meth:`run`) and deletes them when it ends
    (:meth:`delete`); the cluster's start and stop are paid once."""

    def __init__(self) -> None:
        self.port = self.metrics_port = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics(self) -> str:
        """The Prometheus endpoint of the cluster's (one) node."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> ServeCluster:
        """Start the cluster and Serve unless this process already has them (8 logical CPUs: room to
        schedule every deployment of a module's apps on 2 cores, see PLATFORM notes)."""
        import ray
        from ray import serve

        from ops.launch import start_local_ray

        if not ray.is_initialized():
            self.port, self.metrics_port = free_port(), free_port()
            start_local_ray(num_cpus=8, _metrics_export_port=self.metrics_port)
            serve.start(http_options={"host": "127.0.0.1", "port": self.port})
        return self

    def run(self, app, name: str, route_prefix: str, ready: bool = False) -> str:
        """``serve.run`` of ``app`` (not waiting); its base URL, once ``/ready`` answers if ``ready``."""
        from ray import serve

        from ops.launch import wait_until_ready

        serve.run(app, name=name, route_prefix=route_prefix, blocking=False)
        url = self.base + route_prefix.rstrip("/")
        if ready:
            wait_until_ready(url)
        return url

    def delete(self, *names: str) -> None:
        """Delete these apps (those that exist) and wait until their replicas are gone; nothing once
        this process has left the cluster (the multi-node scenarios stop it to start their own)."""
        import ray
        from ray import serve

        if not ray.is_initialized():
            return
        for name in set(names) & set(serve.status().applications):
            serve.delete(name)

    @contextmanager
    def apps(self, *names: str) -> Iterator[ServeCluster]:
        """Deletes the apps ``names`` when the block ends, however it ends (a module's setup that
        fails must not leave its route prefix taken for the next module)."""
        try:
            yield self.start()
        finally:
            self.delete(*names)


@pytest.fixture(scope="session")
def serve_cluster():
    cluster = ServeCluster().start()
    yield cluster
    import ray
    from ray import serve

    if ray.is_initialized():  # not if the multi-node scenarios stopped it
        serve.shutdown()
        ray.shutdown()


TINY_APP = "tiny"
"""The app of configs/tiny_cpu.yaml that ``tiny_server`` serves (its route prefix is ``/tiny``)."""


@pytest.fixture(scope="session")
def tiny_server(serve_cluster):
    """The tiny-model app (configs/tiny_cpu.yaml: experts alpha and beta), deployed once for the
    modules that use it; its base URL."""
    from deployments.app import build_app
    from router.config import serve_config_args

    args = serve_config_args(REPO / "configs/tiny_cpu.yaml")
    with serve_cluster.apps(TINY_APP) as cluster:
        yield cluster.run(build_app(args), TINY_APP, f"/{TINY_APP}", ready=True)


REFERENCE_APP = "reference"
"""The session's own OpenAI server (``reference_server``; route ``/reference``)."""


@pytest.fixture(scope="session")
def reference_server(serve_cluster):
    """A ``ray.serve.llm`` OpenAI app of its own running the tiny model as configs/tiny_cpu.yaml's
    alpha does, under the model name ``tiny-ref``: the remote experts' endpoint, and the server the
    router's answers are compared with. Started once for the modules that use it."""
    from ray.serve.llm import build_openai_app

    from deployments.config import EXPERT
    from deployments.experts.vllm import expert_llm_config
    from router.config import serve_config_args

    args = serve_config_args(REPO / "configs/tiny_cpu.yaml")
    alpha = next(e for e in args["experts"] if e["name"] == "alpha")
    llm_config = expert_llm_config(EXPERT.validate_python({**alpha, "name": "tiny-ref"}))
    with serve_cluster.apps(REFERENCE_APP) as cluster:
        cluster.run(build_openai_app({"llm_configs": [llm_config]}), REFERENCE_APP, f"/{REFERENCE_APP}")
        yield {"url": f"{cluster.base}/{REFERENCE_APP}/v1", "model": "tiny-ref", "llm_config": llm_config}


def tiny_app_args(policy: dict | None = None, **ingress) -> dict:
    """The default app (serve_config.yaml) with its experts on the tiny model: the same expert
    names, declarations and routing policy (the shipped router, unless ``policy`` is given), real vLLM engines
    that start in seconds. Contexts of 2,048 tokens, so a long answer can be asked for."""
    import yaml

    from deployments.config import load_serve_config

    default = yaml.safe_load((REPO / "serve_config.yaml").read_text())["applications"][0]["args"]
    tiny = load_serve_config(REPO / "configs/tiny_cpu.yaml").experts
    declared = ("description", "skills", "examples", "default")
    experts = [
        {
            **tiny[i % len(tiny)].model_dump(exclude_none=True),
            **{key: expert[key] for key in declared if key in expert},
            "name": expert["name"],
            "engine_kwargs": {"max_model_len": 2048, "kv_cache_memory_bytes": 33554432, "max_num_seqs": 64},
        }
        for i, expert in enumerate(default["experts"])
    ]
    return {
        "policy": policy or default["policy"],
        "ingress": {**default["ingress"], **ingress},
        "experts": experts,
    }


SHARED_DATA = REPO.parent / "shared" / "datasets"


def domain_table(n_train: int = 300, n_test: int = 150, seed: int = 0):
    """A labelled table of real router_mix queries where the expert named after a query's domain is
    clearly best (quality 0.9 vs 0.3, plus noise): the signal a router must find."""
    import gzip
    import json

    import numpy as np
    import pandas as pd

    from training.table import conform

    path = SHARED_DATA / "router_mix.jsonl.gz"
    if not path.exists():
        pytest.skip("shared datasets not found beside the repository")
    rng = np.random.default_rng(seed)
    records = [json.loads(line) for line in gzip.open(path, "rt")]
    picked = []
    for split, n in (("train", n_train), ("test", n_test)):
        pool = [r for r in records if r["split"] == split]
        picked += [pool[i] for i in rng.choice(len(pool), n, replace=False)]
    domains = sorted({r["domain"] for r in records})
    rows = [
        {
            "query_id": r["id"],
            "query": r["instruction"],
            "domain": r["domain"],
            "source": r["source"],
            "split": r["split"],
            "expert": e,
            "answer": "",
            "nll": float(rng.uniform(0.5, 2)),
            "bertsim": (q := (0.9 if e == r["domain"] else 0.3) + float(rng.normal(0, 0.05))),
            "quality": q,
            "inference_s": 1.0,
            "input_tokens": 20,
            "output_tokens": 10 * (1 + i),
            "cost": 0.001 * (1 + i),
            "error": "",
        }
        for r in picked
        for i, e in enumerate(domains)
    ]
    return conform(pd.DataFrame(rows))
