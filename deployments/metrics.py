"""The router's Prometheus metrics, through Ray Serve's metrics API (``ray.serve.metrics``).

Ray exports them with its own metrics (each node's metrics agent; Prometheus scrapes it, the Ray
dashboard and KubeRay's PodMonitor pick them up), prefixed ``ray_``:

- ``expert_router_requests_total`` (counter; expert, routed): answered requests per expert;
  routed = picked by the policy rather than named by the client;
- ``expert_router_tokens_total`` (counter; expert, kind): prompt / completion tokens per expert;
- ``expert_router_routing_latency_ms`` (histogram; routed): time to choose the expert;
- ``expert_router_fallbacks_total`` (counter; expert): failed attempts passed on to the next expert;
- ``expert_router_errors_total`` (counter; kind): error replies by kind (invalid_request_error, …);
- ``expert_router_decisions_shed_total`` (counter; tier): decisions the policy could not make in
  time, made by the fast tier (``fast``) or the moving average of its scores (``prior``);
- ``expert_router_spilled_total`` (counter; expert): routed requests that skipped an expert at its
  ``max_in_flight``; ``expert_router_overloaded_total`` (counter): 429s, every candidate full;
- ``expert_router_in_flight``, ``expert_router_ttft_ms``, ``expert_router_tpot_ms``,
  ``expert_router_expected_wait_ms`` (gauges; expert): this replica's live view of each expert.

Outside a Ray worker (unit tests) every call is a no-op.
"""

from __future__ import annotations

from typing import Any

LATENCY_BOUNDARIES_MS = [0.1, 0.25, 0.5, 1, 2, 5, 10, 25, 50, 100, 250]
LOAD_GAUGES = {
    "in_flight": "Requests this router replica has in flight to the expert.",
    "ttft_ms": "Moving average of the expert's time to first token (ms).",
    "tpot_ms": "Moving average of the expert's time per output token (ms).",
    "expected_wait_ms": "Queueing delay a new request to the expert is expected to wait (ms).",
}


class RouterMetrics:
    """Counters and a histogram, created once per router replica."""

    def __init__(self) -> None:
        import ray

        self.enabled = ray.is_initialized()
        if not self.enabled:
            return
        from ray.serve import metrics

        self.requests = metrics.Counter(
            "expert_router_requests_total", "Answered requests per expert.", tag_keys=("expert", "routed")
        )
        self.tokens = metrics.Counter(
            "expert_router_tokens_total", "Tokens per expert and kind.", tag_keys=("expert", "kind")
        )
        self.routing_ms = metrics.Histogram(
            "expert_router_routing_latency_ms",
            "Time to choose the expert (ms).",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=("routed",),
        )
        self.fallbacks = metrics.Counter(
            "expert_router_fallbacks_total",
            "Failed attempts passed to the next expert.",
            tag_keys=("expert",),
        )
        self.errors = metrics.Counter(
            "expert_router_errors_total", "Error replies by kind.", tag_keys=("kind",)
        )
        self.decisions_shed = metrics.Counter(
            "expert_router_decisions_shed_total",
            "Decisions the policy could not make in time, by the tier that made them.",
            tag_keys=("tier",),
        )

        self.spills = metrics.Counter(
            "expert_router_spilled_total", "Routed requests that skipped a full expert.", tag_keys=("expert",)
        )
        self.overloads = metrics.Counter(
            "expert_router_overloaded_total", "429 replies: every candidate expert at its max_in_flight."
        )
        self.gauges = {
            key: metrics.Gauge(f"expert_router_{key}", help_, tag_keys=("expert",))
            for key, help_ in LOAD_GAUGES.items()
        }

    def answered(self, expert: str, routed: bool, routing_ms: float) -> None:
        if self.enabled:
            tag = str(routed).lower()
            self.requests.inc(tags={"expert": expert, "routed": tag})
            self.routing_ms.observe(routing_ms, tags={"routed": tag})

    def shed(self, tier: str) -> None:
        if self.enabled:
            self.decisions_shed.inc(tags={"tier": tier})

    def usage(self, expert: str, usage: Any) -> None:
        if not self.enabled or usage is None:
            return
        for kind in ("prompt", "completion"):
            count = _get(usage, f"{kind}_tokens")
            if count > 0:  # Ray counters take positive increments only
                self.tokens.inc(count, tags={"expert": expert, "kind": kind})

    def fallback(self, expert: str) -> None:
        if self.enabled:
            self.fallbacks.inc(tags={"expert": expert})

    def spilled(self, expert: str) -> None:
        if self.enabled:
            self.spills.inc(tags={"expert": expert})

    def overloaded(self) -> None:
        if self.enabled:
            self.overloads.inc()

    def load(self, snapshot: dict[str, dict[str, Any]]) -> None:
        """Set the load gauges from :meth:`router.balance.LoadTracker.snapshot`."""
        if not self.enabled:
            return
        for expert, values in snapshot.items():
            for key, gauge in self.gauges.items():
                if values.get(key) is not None:
                    gauge.set(values[key], tags={"expert": expert})

    def error(self, kind: str) -> None:
        if self.enabled:
            self.errors.inc(tags={"kind": kind})


def _get(usage: Any, key: str) -> int:
    value = usage.get(key) if isinstance(usage, dict) else getattr(usage, key, 0)
    return int(value or 0)
