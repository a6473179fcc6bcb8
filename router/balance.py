"""Live expert load as one router replica sees it, and the load-aware part of routing.

Per expert the router counts the requests it has in flight and keeps moving averages of what it
measures on the answers that pass through: time to first token (TTFT: the first streamed chunk, or
a whole non-streamed reply less its tokens at the measured time per output token), time per output
token (TPOT, streams; for whole replies the lowest recent time per token stands in), and the
expert's *idle* TTFT (the moving average over requests sent while nothing else was in flight to
it; lowered by any faster loaded sample).

The expected wait of a new request: where the expert's **capacity** is known (the sequences one
replica's engine runs at once, vLLM's ``max_num_seqs``), a request beyond capacity x replicas
queues in the engine, so the wait is the requests ahead of it over that capacity times the
measured service time (the moving average of whole request durations that did not queue); within
capacity there is no wait, and so no needless spilling below saturation. Where it is not known
(remote experts, engines without a ``max_num_seqs``), the measured queueing delay (TTFT above idle)
scaled by how many requests are in flight per replica now against how many were when it was
measured. O(1) per update, no calls on the request path (replica counts are read from Serve in the
background).

The load-aware utility of a candidate is its policy score (predicted quality minus the cost term)
minus ``load_weight`` x expected wait in seconds; ``load_weight`` 0 leaves the policy's ranking
as it is. Each router replica has its own view (no shared state, no extra hops): with R replicas
behind the proxy, each sees about 1/R of the traffic, so its in-flight counts are its share and
its TTFT measurements sample the experts' whole load.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class ExpertLoad:
    """One expert's live state (seconds)."""

    in_flight: int = 0
    ttft_s: float | None = None
    tpot_s: float | None = None
    idle_ttft_s: float | None = None
    load_at_sample: float | None = None
    """Moving average of (in flight + 1) per replica when the TTFT samples were taken."""
    answered: int = 0
    replicas: int = 1
    """Running replicas of the expert, where known (the ingress reads them from Serve)."""
    floor_tpot_s: float | None = None
    """Lowest recent time per output token of whole (non-streamed) replies."""
    capacity: int | None = None
    """Requests one replica runs at once (its engine's ``max_num_seqs``), where known."""
    routers: int = 1
    """Router replicas sending to the expert: this one sees about 1/routers of its traffic and
    counts on that share of its capacity."""
    service_s: float | None = None
    """Moving average of the duration of answered requests that started within capacity."""

    def slots(self) -> int | None:
        """This router replica's share of the requests all the expert's replicas run at once,
        where the capacity is known."""
        if self.capacity is None:
            return None
        return max(1, round(self.capacity * max(self.replicas, 1) / max(self.routers, 1)))

    def expected_wait_s(self) -> float:
        """Queueing delay a new request should expect: with a known capacity, the requests ahead of
        it beyond capacity over capacity x service time; else measured excess TTFT x load now / then."""
        slots = self.slots()
        if slots is not None:
            ahead = self.in_flight + 1 - slots
            return ahead / slots * self.service_s if ahead > 0 and self.service_s else 0.0
        if self.ttft_s is None or self.idle_ttft_s is None or not self.load_at_sample:
            return 0.0
        excess = max(0.0, self.ttft_s - self.idle_ttft_s)
        return excess * (self.in_flight + 1) / max(self.replicas, 1) / self.load_at_sample

    def expected_ttft_s(self) -> float | None:
        return None if self.idle_ttft_s is None else self.idle_ttft_s + self.expected_wait_s()


@dataclass
class Attempt:
    """One request to one expert, from start to its last token."""

    expert: str
    started: float
    load: int
    first_at: float | None = None
    done: bool = False


@dataclass
class LoadTracker:
    """Every expert's :class:`ExpertLoad`, updated by the router as requests start and finish."""

    experts: Sequence[str]
    capacities: dict[str, int | None] = field(default_factory=dict)
    """Per expert, requests one replica runs at once (see :attr:`ExpertLoad.capacity`)."""
    engines: dict[str, str] = field(default_factory=dict)
    """Per expert, the engine that answers for it (default: its own): experts on one engine (a
    base and its LoRA adapters) share one :class:`ExpertLoad`, as they share its sequences."""
    alpha: float = 0.2
    """Weight of a new sample in the moving averages."""
    idle_drift: float = 0.02
    """How fast the lowest time per token of whole replies drifts up towards newer samples."""
    state: dict[str, ExpertLoad] = field(init=False)

    def __post_init__(self) -> None:
        shared: dict[str, ExpertLoad] = {}
        for name in self.experts:
            engine = self.engines.get(name, name)
            shared.setdefault(engine, ExpertLoad(capacity=self.capacities.get(name)))
        self.state = {name: shared[self.engines.get(name, name)] for name in self.experts}

    def engine(self, expert: str) -> str:
        """The engine answering for ``expert``: its base's for a LoRA adapter, else its own name."""
        return self.engines.get(expert, expert)

    def start(self, expert: str) -> Attempt:
        load = self.state[expert]
        attempt = Attempt(expert, time.perf_counter(), load.in_flight)
        load.in_flight += 1
        return attempt

    def first(self, attempt: Attempt, tokens: int = 0) -> None:
        """The first reply came: a stream's first chunk (``tokens`` 0), or a whole reply of
        ``tokens`` output tokens (its TTFT estimated from the measured TPOT)."""
        now = time.perf_counter()
        attempt.first_at = now
        load = self.state[attempt.expert]
        ttft = now - attempt.started
        if tokens > 1:
            # Without a stream's TPOT, the lowest recent time per token of whole replies stands in.
            load.floor_tpot_s = _floor(load.floor_tpot_s, ttft / tokens, self.idle_drift)
            tpot = load.tpot_s if load.tpot_s is not None else load.floor_tpot_s
            ttft = max(0.0, ttft - tpot * (tokens - 1))
        load.ttft_s = _ewma(load.ttft_s, ttft, self.alpha)
        load.load_at_sample = _ewma(
            load.load_at_sample, (attempt.load + 1.0) / max(load.replicas, 1), self.alpha
        )
        idle = load.idle_ttft_s
        if attempt.load == 0:  # nothing else in flight: an idle sample
            load.idle_ttft_s = _ewma(idle, ttft, self.alpha)
        elif idle is None or ttft < idle:  # a loaded expert's TTFT bounds its idle one from above
            load.idle_ttft_s = ttft

    def finish(self, attempt: Attempt, output_tokens: int = 0, streamed: bool = False) -> None:
        """The attempt ended (answered, failed or abandoned); a finished stream's TPOT is sampled.
        Only the first call for an attempt counts."""
        if attempt.done:
            return
        attempt.done = True
        load = self.state[attempt.expert]
        load.in_flight = max(0, load.in_flight - 1)
        if attempt.first_at is None:
            return
        load.answered += 1
        slots = load.slots()
        if slots is None or attempt.load < slots:  # it did not queue: a service time sample
            load.service_s = _ewma(load.service_s, time.perf_counter() - attempt.started, self.alpha)
        if streamed and output_tokens > 1:
            tpot = (time.perf_counter() - attempt.first_at) / (output_tokens - 1)
            load.tpot_s = _ewma(load.tpot_s, tpot, self.alpha)

    def snapshot(self) -> dict[str, dict[str, float | int | None]]:
        """Per expert: in flight, moving TTFT / TPOT / idle TTFT and expected wait (ms)."""
        return {
            name: {
                "in_flight": s.in_flight,
                "ttft_ms": _ms(s.ttft_s),
                "tpot_ms": _ms(s.tpot_s),
                "idle_ttft_ms": _ms(s.idle_ttft_s),
                "expected_wait_ms": _ms(s.expected_wait_s()),
                "answered": s.answered,
                "replicas": s.replicas,
                "capacity": s.capacity,
                "service_ms": _ms(s.service_s),
            }
            for name, s in self.state.items()
        }


def load_aware_ranking(
    ranking: Sequence[str],
    scores: dict[str, float],
    waits_s: dict[str, float],
    load_weight: float,
    slack_s: float = 0.0,
) -> list[str]:
    """``ranking`` re-ordered by score - ``load_weight`` x (expected wait - ``slack_s``, at least 0)
    (stable: ties keep the policy's order; experts with no finite score stay at the end). Waits
    within the slack are measurement noise, not queueing: they change nothing."""
    if load_weight <= 0:
        return list(ranking)

    def utility(name: str) -> float:
        score = scores.get(name, -math.inf)
        penalty = load_weight * max(0.0, waits_s.get(name, 0.0) - slack_s)
        return score - penalty if math.isfinite(score) else -math.inf

    return sorted(ranking, key=lambda name: -utility(name))


def _ewma(old: float | None, new: float, alpha: float) -> float:
    return new if old is None else (1 - alpha) * old + alpha * new


def _floor(old: float | None, new: float, drift: float) -> float:
    """A running minimum that drifts up towards newer samples (a stale minimum fades)."""
    return new if old is None or new < old else old + drift * (new - old)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 3)
