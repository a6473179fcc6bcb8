"""Soak: minutes of mixed traffic through the default app, counting every failure and watching memory.

The default app (serve_config.yaml's experts, shipped policy and ingress settings; tiny-model vLLM
experts, ``tests.conftest.tiny_app_args``) takes ``--minutes`` of traffic from ``--concurrency``
clients. Each request is one of (by turns, ``MIX``): routed chat, routed chat streamed, routed text
completion, chat to a named expert (bypass), streamed, a bad request (each kind with its expected
4xx), and a stream the client drops after its first event.

Counted: requests, statuses, ``errors_5xx``, ``lost`` (no HTTP answer, or a 200 stream that ended
without ``[DONE]``, the deliberate drops aside), ``unexpected`` (a status other than the one expected
for that kind), and the experts' unfinished engine requests at the end (abandoned streams must be
cancelled: 0). The RSS of the router replica and of the HTTP proxy is sampled every
``--sample-s``; growth is measured from the first sample after ``--warmup-minutes``.

One JSON line: ``{"benchmark": "soak", "minutes", "requests", "errors_5xx", "lost", "rss_mb":
{"router": [first, last], "proxy": [first, last]}, ...}``.

    .venv/bin/python bench/soak.py [--minutes 10] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ops.launch import APP_NAME, run_local, stop_local  # noqa: E402
from router.config import INGRESS_DEPLOYMENT  # noqa: E402
from tests.conftest import free_port, tiny_app_args  # noqa: E402
from tests.traffic import Outcome, Traffic, chat_body  # noqa: E402

BAD = [  # (body or raw text, expected status)
    ("{not json", 400),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}, 400),
    ({"messages": []}, 400),
    ({"model": "no-such-expert", "messages": [{"role": "user", "content": "hi"}]}, 404),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, 400),
]
MIX = ["routed", "routed", "routed_stream", "completion", "bypass", "bypass_stream", "bad", "drop"]


def mixed_call(experts: list[str], max_tokens: int):
    """A ``tests.traffic`` call that sends request ``i`` as kind ``MIX[i % len(MIX)]``."""

    async def call(client: httpx.AsyncClient, base: str, i: int) -> Outcome:
        kind = MIX[i % len(MIX)]
        started = time.monotonic()
        expected, stream, url = 200, kind.endswith("_stream") or kind == "drop", f"{base}/v1/chat/completions"
        body: Any = chat_body(i, max_tokens)
        if kind.startswith("bypass"):
            body["model"] = experts[i % len(experts)]
        elif kind == "completion":
            url, body = (
                f"{base}/v1/completions",
                {"model": "router", "prompt": f"Q{i}: 2+2=", "max_tokens": max_tokens},
            )
        elif kind == "bad":
            body, expected = BAD[(i // len(MIX)) % len(BAD)]
        if stream:
            body["stream"] = True
        try:
            if isinstance(body, str):
                r = await client.post(url, content=body, headers={"content-type": "application/json"})
                return _outcome(started, kind, r.status_code, expected)
            if not stream:
                r = await client.post(url, json=body)
                return _outcome(started, kind, r.status_code, expected)
            async with client.stream("POST", url, json=body) as r:
                done = False
                async for line in r.aiter_lines():
                    if kind == "drop" and line.startswith("data:"):
                        return _outcome(started, kind, r.status_code, expected)  # leave mid-stream
                    done = done or line.strip() == "data: [DONE]"
                status = r.status_code if done or r.status_code != 200 else 0  # a cut stream is lost
                return _outcome(started, kind, status, expected)
        except httpx.HTTPError as exc:
            return Outcome(started, 0, None, kind, _ms(started), f"{type(exc).__name__}: {exc}")

    return call


def _ms(started: float) -> float:
    return (time.monotonic() - started) * 1e3


def _outcome(started: float, kind: str, status: int, expected: int) -> Outcome:
    error = "" if status == expected else f"expected {expected}"
    return Outcome(started, status, None, kind, _ms(started), error)


def process_rss_mb(marker: str) -> float:
    """Summed RSS (MB) of this machine's processes whose title/command line contains ``marker``
    (Ray names worker processes after their actor, e.g. ``ray::ProxyActor``)."""
    total = 0
    for proc in psutil.process_iter(["cmdline", "memory_info"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if marker in cmdline and proc.info["memory_info"]:
            total += proc.info["memory_info"].rss
    return round(total / 2**20, 1)


class RssSampler:
    """RSS of the router replica and the proxy every ``every_s`` seconds, in a thread."""

    MARKERS = {"router": f"ServeReplica:{APP_NAME}:{INGRESS_DEPLOYMENT}", "proxy": "ProxyActor"}

    def __init__(self, every_s: float):
        self.every_s, self.samples = every_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set():
            sample = {name: process_rss_mb(marker) for name, marker in self.MARKERS.items()}
            self.samples.append({"t_s": round(time.monotonic() - started, 1), **sample})
            self._stop.wait(self.every_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def engine_unfinished(experts: list[str]) -> dict[str, int]:
    """Requests each expert's engine still holds (0: every abandoned request was cancelled)."""
    from ray import serve

    out = {}
    for name in experts:
        handle = serve.get_deployment_handle(f"expert:{name}", app_name=APP_NAME)
        out[name] = handle.engine_load.remote().result()["unfinished_requests"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--warmup-minutes", type=float, default=1.0)
    parser.add_argument("--out", type=Path, help="also write the JSON (with every RSS sample) here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request

    app = tiny_app_args()
    experts = [e["name"] for e in app["experts"]]
    base = run_local(app, free_port(), num_cpus=8)
    try:
        with RssSampler(args.sample_s) as rss:
            traffic = Traffic(base, args.concurrency, mixed_call(experts, args.max_tokens)).start()
            deadline = time.monotonic() + args.minutes * 60
            while time.monotonic() < deadline:
                time.sleep(min(30.0, max(0.0, deadline - time.monotonic())))
                n = len(traffic.outcomes)
                print(f"soak: {n} requests, last RSS {rss.samples[-1]}", file=sys.stderr, flush=True)
            outcomes = traffic.stop()
        time.sleep(2)  # let cancellations reach the engines
        unfinished = engine_unfinished(experts)
    finally:
        stop_local()

    warm = [s for s in rss.samples if s["t_s"] >= args.warmup_minutes * 60] or rss.samples
    statuses = Counter(o.status for o in outcomes)
    result = {
        "benchmark": "soak",
        "minutes": args.minutes,
        "concurrency": args.concurrency,
        "requests": len(outcomes),
        "requests_per_s": round(len(outcomes) / (args.minutes * 60), 2),
        "by_kind": dict(Counter(o.kind for o in outcomes)),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors_5xx": sum(v for k, v in statuses.items() if k >= 500),
        "lost": sum(1 for o in outcomes if o.status == 0),
        "unexpected": dict(Counter(f"{o.kind}:{o.status}" for o in outcomes if o.error)),
        "engine_unfinished_after": unfinished,
        "rss_mb": {name: [warm[0][name], warm[-1][name]] for name in RssSampler.MARKERS},
        "rss_growth_after_warmup": {
            name: round(warm[-1][name] / warm[0][name] - 1, 4) if warm[0][name] else None
            for name in RssSampler.MARKERS
        },
    }
    print(json.dumps(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**result, "rss_samples": rss.samples}, indent=1))


if __name__ == "__main__":
    main()
