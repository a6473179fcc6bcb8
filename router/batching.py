"""Micro-batching of blocking work off the event loop (routing decisions of encoder routers).

Callers ``await batcher.submit(item)``; one consumer task takes every queued item (up to
``max_batch_size``), hands them as one list to ``fn`` in a worker thread, and resolves each
caller's future with its result. Items that arrive while a batch is being computed form the next
batch, so batches grow with load and an idle router adds no wait: ``max_wait_ms`` (default 0)
optionally holds a batch open a little longer for more items.

Why not ``ray.serve.batch``: its consumer pulls a new batch as soon as one item is queued, even
while the previous batch still runs (the concurrency limit applies after batching), so with a
zero wait its batches stay at one item under load, and a non-zero wait delays every request.
This module does not import Ray.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class MicroBatcher(Generic[Item, Result]):
    """Runs ``fn(list_of_items) -> list_of_results`` in one worker thread, batching concurrent calls."""

    def __init__(
        self,
        fn: Callable[[list[Item]], Sequence[Result]],
        max_batch_size: int = 64,
        max_wait_ms: float = 0.0,
        name: str = "decisions",
    ):
        if max_batch_size < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_size must be >= 1 and max_wait_ms >= 0")
        self.fn, self.max_batch_size, self.max_wait_s = fn, max_batch_size, max_wait_ms / 1e3
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._queue: asyncio.Queue[tuple[Item, asyncio.Future]] | None = None
        self._consumer: asyncio.Task | None = None
        self.batches = 0
        self.items = 0
        self.pending = 0  # submitted, not yet answered
        self.seconds_per_item = 0.0  # moving average of the compute time per item

    def expected_wait_s(self) -> float:
        """Roughly how long a new item would wait for its result now."""
        return self.pending * self.seconds_per_item

    async def submit(self, item: Item) -> Result:
        """The result for ``item``, computed in a batch with whatever else is waiting."""
        loop = asyncio.get_running_loop()
        if self._consumer is None or self._consumer.done() or self._consumer.get_loop() is not loop:
            self._queue = asyncio.Queue()
            self._consumer = loop.create_task(self._consume())
        future: asyncio.Future = loop.create_future()
        self._queue.put_nowait((item, future))
        self.pending += 1
        try:
            return await future
        finally:
            self.pending -= 1

    async def _consume(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch_size:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            batch = [(item, future) for item, future in batch if not future.cancelled()]
            if not batch:
                continue
            started = time.monotonic()
            try:
                results = await loop.run_in_executor(self._executor, self.fn, [item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"batched function returned {len(results)} results for {len(batch)}")
            except Exception as exc:  # every caller of this batch gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            per_item = (time.monotonic() - started) / len(batch)
            smoothed = 0.8 * self.seconds_per_item + 0.2 * per_item
            self.seconds_per_item = smoothed if self.batches else per_item
            self.batches += 1
            self.items += len(batch)
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)

    def stats(self) -> dict[str, Any]:
        """Batches run, items decided and the mean batch size so far."""
        return {
            "batches": self.batches,
            "items": self.items,
            "mean_batch_size": round(self.items / self.batches, 2) if self.batches else 0.0,
        }
