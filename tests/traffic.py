"""Client traffic that keeps flowing in a background thread while a test (or bench) breaks things.

``Traffic(base_url, concurrency, call).start()`` runs ``concurrency`` clients, each sending one
request after another through ``call`` until :meth:`Traffic.stop`, which returns every
:class:`Outcome` (time, status, answering expert, latency). Calls: :func:`routed_chat` (raw HTTP, no
client retries: every failure counts) and :func:`openai_chat` (the official SDK with its default
retries, as applications call it).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class Outcome:
    """One client request: when it started (monotonic s), its HTTP status (0: no response at all),
    the expert that answered, what it asked for, and how long it took."""

    started: float
    status: int
    expert: str | None
    kind: str = "chat"
    ms: float = 0.0
    error: str = ""


Call = Callable[[httpx.AsyncClient, str, int], Awaitable[Outcome]]
"""``call(client, base_url, i)`` sends request number ``i`` and reports its outcome."""


def chat_body(i: int, max_tokens: int = 24, **extra: Any) -> dict[str, Any]:
    return {
        "model": "router",
        "messages": [{"role": "user", "content": f"Question {i}: name a river in Europe."}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        **extra,
    }


def routed_chat(max_tokens: int = 24, **extra: Any) -> Call:
    """Routed chat completions over raw HTTP: no retries, so every failure is a failed request."""

    async def call(client: httpx.AsyncClient, base_url: str, i: int) -> Outcome:
        started = time.monotonic()
        try:
            r = await client.post(f"{base_url}/v1/chat/completions", json=chat_body(i, max_tokens, **extra))
        except httpx.HTTPError as exc:
            return Outcome(started, 0, None, ms=_ms(started), error=f"{type(exc).__name__}: {exc}")
        expert = r.json().get("expert") if r.status_code == 200 else None
        return Outcome(started, r.status_code, expert, ms=_ms(started), error="" if expert else r.text[:300])

    return call


def openai_chat(max_tokens: int = 24) -> Call:
    """Routed chat completions through the official ``openai`` SDK with its default retries (2, on
    connection errors, 408/409/429 and 5xx): what an application sees."""
    import openai

    clients: dict[int, openai.AsyncOpenAI] = {}

    async def call(client: httpx.AsyncClient, base_url: str, i: int) -> Outcome:
        sdk = clients.setdefault(
            id(client), openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="none", http_client=client)
        )
        started = time.monotonic()
        body = chat_body(i, max_tokens)
        try:
            reply = await sdk.chat.completions.create(**body)
        except openai.APIStatusError as exc:
            return Outcome(started, exc.status_code, None, ms=_ms(started), error=str(exc)[:300])
        except openai.APIError as exc:
            return Outcome(started, 0, None, ms=_ms(started), error=f"{type(exc).__name__}: {exc}")
        return Outcome(started, 200, (reply.model_extra or {}).get("expert"), ms=_ms(started))

    return call


def _ms(started: float) -> float:
    return (time.monotonic() - started) * 1e3


class Traffic:
    """``concurrency`` clients sending requests through ``call`` in a background thread."""

    def __init__(self, base_url: str, concurrency: int, call: Call, timeout_s: float = 120.0):
        self.base_url, self.concurrency, self.call, self.timeout_s = base_url, concurrency, call, timeout_s
        self.outcomes: list[Outcome] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> Traffic:
        self._thread.start()
        return self

    def stop(self) -> list[Outcome]:
        """Stop sending; wait for the requests in flight; every outcome, in the order they ended."""
        self._stopping.set()
        self._thread.join(self.timeout_s + 30)
        assert not self._thread.is_alive(), "traffic did not stop: a request hangs"
        return list(self.outcomes)

    def wait_for(self, n: int, timeout_s: float = 300.0) -> None:
        """Block until ``n`` more requests have ended."""
        target, deadline = len(self.outcomes) + n, time.monotonic() + timeout_s
        while len(self.outcomes) < target:
            assert self._thread.is_alive() and time.monotonic() < deadline, "traffic stalled"
            time.sleep(0.05)

    async def _run(self) -> None:
        counter = iter(range(10**9))
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(timeout=self.timeout_s, limits=limits) as client:

            async def client_loop() -> None:
                while not self._stopping.is_set():
                    self.outcomes.append(await self.call(client, self.base_url, next(counter)))

            await asyncio.gather(*(client_loop() for _ in range(self.concurrency)))


def summary(outcomes: list[Outcome]) -> dict[str, Any]:
    """Requests, statuses and answering experts of ``outcomes``."""
    ms = sorted(o.ms for o in outcomes) or [0.0]
    return {
        "requests": len(outcomes),
        "p50_ms": round(ms[len(ms) // 2], 1),
        "p99_ms": round(ms[int(len(ms) * 0.99)], 1),
        "max_ms": round(ms[-1], 1),
        "statuses": dict(Counter(o.status for o in outcomes)),
        "experts": dict(Counter(o.expert for o in outcomes if o.status == 200)),
        "errors": sorted({o.error for o in outcomes if o.status != 200})[:5],
    }
