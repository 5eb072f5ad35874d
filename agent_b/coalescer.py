"""Request coalescing: concurrent single calls become one batched call.

The first item of a batch waits at most `max_wait_s` for company; the batch closes earlier when
it reaches `max_batch_size`. Batches run one at a time on a thread of their own, so the event
loop keeps accepting requests while the model computes, and whatever arrived during a forward
pass forms the next batch at once (continuous batching, in its simplest form).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


class CoalescerFullError(RuntimeError):
    """More items are waiting than the coalescer may hold."""


class Coalescer(Generic[ItemT, ResultT]):
    def __init__(
        self,
        run_batch: Callable[[list[ItemT]], list[ResultT]],
        max_batch_size: int,
        max_wait_s: float,
        max_queued: int,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queued = max_queued
        self.on_batch = on_batch
        self._queue: asyncio.Queue[tuple[ItemT, asyncio.Future[ResultT]]] = asyncio.Queue()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="coalescer")
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, item: ItemT) -> ResultT:
        """The result for `item`, computed in a batch with whatever else is waiting."""
        if self._queue.qsize() >= self.max_queued:
            raise CoalescerFullError(f"{self._queue.qsize()} items already waiting")
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work(), name="coalescer")
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        return await future

    async def _collect(self) -> list[tuple[ItemT, asyncio.Future[ResultT]]]:
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except TimeoutError:
                break
        # A caller that gave up (its deadline passed) no longer needs its answer.
        return [(item, future) for item, future in batch if not future.done()]

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(
                    self._thread, self.run_batch, [item for item, _ in batch]
                )
                if len(results) != len(batch):
                    raise RuntimeError(f"{len(results)} results for a batch of {len(batch)}")
            except asyncio.CancelledError:
                for _, future in batch:  # shutting down: nobody should wait on these forever
                    future.cancel()
                raise
            except Exception as exc:
                logger.exception("batch of %d failed", len(batch))
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            if self.on_batch is not None:
                self.on_batch(len(batch), time.perf_counter() - started)
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            future.cancel()
        self._thread.shutdown(wait=False, cancel_futures=True)
