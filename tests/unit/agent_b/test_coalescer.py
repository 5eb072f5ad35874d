"""Request coalescing: concurrent submits become bounded batches, failures reach every caller."""

from __future__ import annotations

import asyncio
import threading

import pytest

from agent_b.coalescer import Coalescer, CoalescerFullError


class Recorder:
    """A batch function that squares numbers and remembers the batches it saw."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.gate = gate
        self.entered = threading.Event()
        """Set once a batch is inside this function (held there until `gate` opens)."""

    def __call__(self, batch: list[int]) -> list[int]:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(30)
        self.batches.append(batch)
        return [x * x for x in batch]


async def batch_entered(recorder: Recorder) -> None:
    """Wait, off the event loop, until the worker thread is inside the batch function."""
    assert await asyncio.to_thread(recorder.entered.wait, 30), "no batch started within 30s"


async def test_concurrent_submits_share_batches() -> None:
    recorder = Recorder()
    coalescer = Coalescer(recorder, max_batch_size=4, max_wait_s=0.5, max_queued=100)
    results = await asyncio.gather(*(coalescer.submit(i) for i in range(10)))
    await coalescer.aclose()
    assert results == [i * i for i in range(10)]  # each caller gets its own answer
    assert [len(b) for b in recorder.batches] == [4, 4, 2]  # bounded by max_batch_size
    assert sorted(x for b in recorder.batches for x in b) == list(range(10))


async def test_a_lone_request_waits_at_most_max_wait() -> None:
    recorder = Recorder()
    coalescer = Coalescer(recorder, max_batch_size=64, max_wait_s=0.05, max_queued=100)
    # were the wait unbounded, this would hang until the test's timeout
    assert await asyncio.wait_for(coalescer.submit(3), timeout=30) == 9
    await coalescer.aclose()
    assert recorder.batches == [[3]]


async def test_requests_arriving_during_a_batch_form_the_next_one() -> None:
    gate = threading.Event()
    recorder = Recorder(gate)
    coalescer = Coalescer(recorder, max_batch_size=8, max_wait_s=0.0, max_queued=100)
    first = asyncio.ensure_future(coalescer.submit(1))
    await batch_entered(recorder)  # batch [1] is held in the worker thread
    later = [asyncio.ensure_future(coalescer.submit(i)) for i in range(2, 6)]
    # One pass of the loop, no time: tasks run in the order they were made, so each of these
    # has queued its item before this one resumes.
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(first, *later) == [1, 4, 9, 16, 25]
    await coalescer.aclose()
    assert recorder.batches == [[1], [2, 3, 4, 5]]


async def test_full_queue_is_refused() -> None:
    gate = threading.Event()
    recorder = Recorder(gate)
    coalescer = Coalescer(recorder, max_batch_size=1, max_wait_s=0.0, max_queued=2)
    running = asyncio.ensure_future(coalescer.submit(0))
    await batch_entered(recorder)  # taken by the worker; the queue is empty again
    waiting = [asyncio.ensure_future(coalescer.submit(i)) for i in (1, 2)]
    await asyncio.sleep(0)  # one pass of the loop: both have queued their items
    with pytest.raises(CoalescerFullError, match="2 items already waiting"):
        await coalescer.submit(3)
    gate.set()
    assert await asyncio.gather(running, *waiting) == [0, 1, 4]
    await coalescer.aclose()


async def test_a_failing_batch_fails_its_callers_and_the_next_batch_runs() -> None:
    def run(batch: list[int]) -> list[int]:
        if 0 in batch:
            raise ValueError("zero")
        return batch

    coalescer = Coalescer(run, max_batch_size=2, max_wait_s=0.5, max_queued=100)
    failed = await asyncio.gather(coalescer.submit(0), coalescer.submit(1), return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in failed)
    assert await coalescer.submit(7) == 7
    await coalescer.aclose()


async def test_close_cancels_waiting_callers() -> None:
    gate = threading.Event()
    recorder = Recorder(gate)
    coalescer = Coalescer(recorder, max_batch_size=1, max_wait_s=0.0, max_queued=10)
    calls = [asyncio.ensure_future(coalescer.submit(i)) for i in range(3)]
    await batch_entered(recorder)  # [0] held in the worker, 1 and 2 waiting in the queue
    await coalescer.aclose()
    gate.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
