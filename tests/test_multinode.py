"""At cluster shape: a real multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: one
raylet per node), shaped like the KubeRay cluster of ``k8s/``, with real Serve and real vLLM tiny
experts, while client traffic flows:

- head: the Serve controller, the HTTP proxy (``proxy_location: HeadOnly``) and the dashboard that
  ``serve deploy`` talks to;
- two router nodes (custom resource ``router_node``, the KubeRay CPU group's): one ingress replica
  each (``ingress.resources`` + ``max_replicas_per_node: 1``);
- one node per expert (``<expert>_node``): each expert's replica pinned by ``resources``.

Placement comes from the same config fields that ``ops/kuberay.py`` turns into worker
group resources. The app is deployed as users deploy it: ``serve deploy CONFIG`` against the
dashboard (what a RayService does), and updated in place the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from ops.launch import APP_NAME, QUIET_RAY_ENV, wait_until_ready
from tests.conftest import REPO, free_port
from tests.traffic import Outcome, Traffic, openai_chat, routed_chat, summary

pytestmark = [pytest.mark.e2e, pytest.mark.multinode, pytest.mark.timeout(900)]

ROUTER_NODE = {"router_node": 1000}


def expert_node(name: str) -> dict[str, float]:
    return {f"{name}_node": 1000}


def serve_config(http_port: int, policy: dict[str, Any] | None = None) -> dict[str, Any]:
    """configs/tiny_cpu.yaml placed like the KubeRay cluster: two router replicas on two router
    nodes, each expert on its own node; routing by the fixed policy preferring alpha, or by
    ``policy`` given as the ingress deployment's ``user_config`` (an in-place update)."""
    doc = yaml.safe_load((REPO / "configs/tiny_cpu.yaml").read_text())
    app = doc["applications"][0]
    args = app["args"]
    args["policy"] = {"name": "fixed", "args": {"expert": "alpha"}}
    if policy is not None:
        app["deployments"] = [{"name": "ingress", "user_config": {"policy": policy}}]
    args["ingress"] |= {
        "resources": {"router_node": 1},
        "max_replicas_per_node": 1,
        "autoscaling": {"min_replicas": 2, "max_replicas": 2},
        "expert_timeout_s": 30,
        # The policy alone decides (no load-aware re-ranking), so each scenario knows which expert
        # a request should reach.
        "load": {"load_weight": 0},
    }
    for expert in args["experts"]:
        expert["resources"] = {f"{expert['name']}_node": 1}
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": http_port},
        "applications": [app],
    }


class MultiNode:
    """The cluster, its nodes by role, and ``serve deploy`` against it."""

    def __init__(self, tmp: Path):
        from ray.cluster_utils import Cluster

        self.tmp, self.http_port, dashboard_port = tmp, free_port(), free_port()
        self.dashboard = f"http://127.0.0.1:{dashboard_port}"
        self.base_url = f"http://127.0.0.1:{self.http_port}"
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 1, "include_dashboard": True, "dashboard_port": dashboard_port},
        )
        self.nodes: dict[str, Any] = {}
        for name in ("router-1", "router-2"):
            self.add(name, ROUTER_NODE)
        for name in ("alpha", "beta"):
            self.add(name, expert_node(name))

    def add(self, name: str, resources: dict[str, float]) -> None:
        self.nodes[name] = self.cluster.add_node(num_cpus=1, resources=resources)
        self.cluster.wait_for_nodes()

    def remove(self, name: str) -> None:
        """The node is lost: its raylet and every process on it are killed at once."""
        self.cluster.remove_node(self.nodes.pop(name), allow_graceful=False)

    def deploy(self, policy: dict[str, Any] | None = None) -> None:
        """``serve deploy`` of the app (see :func:`serve_config`): starts it, or updates it."""
        path = self.tmp / f"serve_{len(list(self.tmp.glob('serve_*.yaml')))}.yaml"
        path.write_text(yaml.safe_dump(serve_config(self.http_port, policy)))
        serve = Path(sys.executable).with_name("serve")
        env = {**QUIET_RAY_ENV, **os.environ}
        subprocess.run([str(serve), "deploy", str(path), "--address", self.dashboard], check=True, env=env)

    def running_replicas(self, deployment: str) -> int:
        """Running replicas of ``deployment``, from the dashboard's Serve REST API (what ``serve
        status`` reads). Not ``serve.status()`` in this process: after an earlier test module's
        cluster, Serve's cached controller client survives ``ray.shutdown()`` and, since job ids
        restart with each cluster, passes Ray's same-job check and points at a dead controller."""
        reply = httpx.get(f"{self.dashboard}/api/serve/applications/", timeout=30)
        if reply.status_code != 200:
            return 0  # the dashboard could not reach the controller: none known to run (wait retries)
        replicas = reply.json()["applications"][APP_NAME]["deployments"][deployment]["replicas"]
        return sum(replica["state"] == "RUNNING" for replica in replicas)

    def shutdown(self) -> None:
        import ray

        ray.shutdown()
        self.cluster.shutdown()


@pytest.fixture(scope="module")
def multinode(tmp_path_factory):
    import ray

    ray.shutdown()  # the session's one-node cluster (tests/conftest.py), if earlier modules started it
    nodes = MultiNode(tmp_path_factory.mktemp("multinode"))
    try:
        ray.init(address=nodes.cluster.address, log_to_driver=False)
        nodes.deploy()
        wait_until_ready(nodes.base_url, timeout_s=600)
        yield nodes
    finally:
        nodes.shutdown()


def replicas() -> dict[str, dict[str, str]]:
    """The live replicas of each deployment of the app: actor id -> node id."""
    from ray.util.state import list_actors

    out: dict[str, dict[str, str]] = {}
    prefix = f"ServeReplica:{APP_NAME}:"
    for actor in list_actors(filters=[("state", "=", "ALIVE")], detail=True, limit=10_000):
        if actor.class_name.startswith(prefix):
            out.setdefault(actor.class_name[len(prefix) :], {})[actor.actor_id] = actor.node_id
    return out


def replica_nodes() -> dict[str, list[str]]:
    """The nodes of the live replicas of each deployment of the app (sorted)."""
    return {name: sorted(nodes.values()) for name, nodes in replicas().items()}


def wait(condition, timeout_s: float, what: str, every_s: float = 0.5) -> float:
    """Seconds until ``condition()`` is true (AssertionError naming ``what`` after ``timeout_s``)."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"not within {timeout_s}s: {what}"
        time.sleep(every_s)
    return time.monotonic() - started


def ready_status(base_url: str) -> tuple[int, dict]:
    r = httpx.get(f"{base_url}/ready", timeout=30)
    return r.status_code, r.json()


def lost_on_status(base_url: str, expert: str) -> bool:
    """Whether the answering router replica's ``/status`` says ``expert`` has no running replica."""
    return httpx.get(f"{base_url}/status", timeout=30).json()["load"]["experts"][expert]["lost"]


def failed(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if o.status != 200]


def test_placement_follows_the_config(multinode):
    placed = replica_nodes()
    node_of = {name: node.node_id for name, node in multinode.nodes.items()}
    assert placed["ingress"] == sorted([node_of["router-1"], node_of["router-2"]])
    assert placed["expert:alpha"] == [node_of["alpha"]]
    assert placed["expert:beta"] == [node_of["beta"]]


def test_expert_node_lost_under_load_falls_back_then_recovers(multinode):
    """All traffic prefers alpha; alpha's node dies mid-traffic: every request still gets a 200 (the
    ones in flight fall back to beta), /ready says alpha is missing and /status that it is lost (so
    the router tries it last instead of waiting out a timeout), and once a node with alpha's
    resource joins, Serve places alpha there, it answers again and is no longer lost."""
    base = multinode.base_url
    traffic = Traffic(base, concurrency=6, call=routed_chat(max_tokens=32)).start()
    try:
        traffic.wait_for(24)
        cut = time.monotonic()
        multinode.remove("alpha")
        not_ready_s = wait(lambda: ready_status(base)[0] == 503, 90, "/ready reports the lost expert")
        status, body = ready_status(base)
        assert body["experts"]["beta"] == "ok" and body["experts"]["alpha"] != "ok", body
        # Each router replica reads it from Serve's status; 4 reads in a row (the proxy spreads
        # them over the replicas, though it does not guarantee to reach both).
        lost_s = wait(lambda: all(lost_on_status(base, "alpha") for _ in range(4)), 60, "/status: alpha lost")
        assert not lost_on_status(base, "beta")
        traffic.wait_for(30)
        multinode.add("alpha-2", expert_node("alpha"))
        back_s = wait(lambda: ready_status(base)[0] == 200, 600, "alpha back on the new node")
        back = time.monotonic()
        wait(
            lambda: any(o.expert == "alpha" and o.started > back for o in traffic.outcomes),
            120,
            "alpha answering again",
        )
        wait(lambda: not any(lost_on_status(base, "alpha") for _ in range(4)), 60, "alpha not lost")
    finally:
        outcomes = traffic.stop()
    print(
        json.dumps(
            {
                "expert_node_lost": summary(outcomes),
                "not_ready_after_s": not_ready_s,
                "lost_on_status_after_s": lost_s,
                "back_s": back_s,
            }
        )
    )
    assert not failed(outcomes), summary(failed(outcomes))
    during = [o for o in outcomes if cut < o.started < back]
    assert during and {o.expert for o in during} >= {"beta"}
    assert replica_nodes()["expert:alpha"] == [multinode.nodes["alpha-2"].node_id]


def test_router_node_lost_under_load(multinode):
    """One of the two ingress replicas' node dies mid-traffic. Clients of the official SDK (default
    retries) see no failure; raw HTTP clients without retries may lose only the requests that were
    in flight in the lost replica (or routed to it before the proxy noticed); later ones succeed,
    and a new router node gets the replica back."""
    base = multinode.base_url
    raw = Traffic(base, concurrency=4, call=routed_chat(max_tokens=32)).start()
    sdk = Traffic(base, concurrency=4, call=openai_chat(max_tokens=32)).start()
    try:
        raw.wait_for(20)
        sdk.wait_for(20)
        cut = time.monotonic()
        multinode.remove("router-1")
        raw.wait_for(40)
        sdk.wait_for(40)
        multinode.add("router-3", ROUTER_NODE)
        wait(lambda: multinode.running_replicas("ingress") == 2, 300, "two router replicas again")
        raw.wait_for(20)
    finally:
        raw_outcomes, sdk_outcomes = raw.stop(), sdk.stop()
    lost = failed(raw_outcomes)
    report = {
        "raw": summary(raw_outcomes),
        "sdk": summary(sdk_outcomes),
        "raw_failed_after_cut_s": [round(o.started - cut, 2) for o in lost],
    }
    print(json.dumps({"router_node_lost": report}))
    assert not failed(sdk_outcomes), report
    assert all(o.started < cut + 30 for o in lost), report  # none once the proxy noticed
    assert len(lost) <= 4 + 8, report  # at most what was in flight, plus what was routed before
    assert replica_nodes()["ingress"] == sorted(
        [multinode.nodes["router-2"].node_id, multinode.nodes["router-3"].node_id]
    )


def test_live_rollout_of_a_new_policy_loses_nothing(multinode):
    """``serve deploy`` of a new policy in the router's ``user_config`` while traffic flows (what a
    RayService in-place update does): no request fails, nothing restarts, and once rolled out every
    request is routed by the new policy."""
    base = multinode.base_url
    before = replicas()
    traffic = Traffic(base, concurrency=6, call=routed_chat(max_tokens=16)).start()
    try:
        traffic.wait_for(20)
        multinode.deploy({"name": "fixed", "args": {"expert": "beta"}})

        def rolled_out() -> bool:
            body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            r = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=120)
            scores = json.loads(r.headers.get("x-routing-scores", "{}"))
            return r.status_code == 200 and scores.get("beta") == 1.0

        rollout_s = wait(lambda: all(rolled_out() for _ in range(10)), 300, "the new policy routes")
        done = time.monotonic()
        traffic.wait_for(30)
    finally:
        outcomes = traffic.stop()
        print(json.dumps({"rollout": summary(outcomes)}))
    print(json.dumps({"rollout_s": rollout_s}))
    assert not failed(outcomes), summary(failed(outcomes))
    after = [o for o in outcomes if o.started > done]
    assert after and Counter(o.expert for o in after) == {"beta": len(after)}
    assert multinode.running_replicas("ingress") == 2
    assert replicas() == before  # an in-place update: no replica was replaced
