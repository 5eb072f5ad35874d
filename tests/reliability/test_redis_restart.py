"""Redis restarted under load, once by SIGKILL (only the fsynced append-only file survives) and
once cleanly, while producers append and a consumer reads, commits and acks: every confirmed
append is consumed, no acknowledged sample comes back, and the clients retry instead of
raising."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from services.queue import SampleQueue
from services.redis_server import EmbeddedRedis, connect
from tests.utils.figures import Figures
from tests.utils.samples import make_sample

PRODUCERS = 3
PER_PRODUCER = 20
PUT_INTERVAL_S = 0.05
DOWNTIME_S = 1.0


@dataclass
class Ledger:
    """What each side was told by Redis, to compare once the dust settles."""

    confirmed: set[str] = field(default_factory=set)
    committed: list[str] = field(default_factory=list)
    acked: set[str] = field(default_factory=set)
    acked_redelivered: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    slowest_put_s: float = 0.0


async def produce(queue: SampleQueue, worker: int, ledger: Ledger) -> None:
    for i in range(PER_PRODUCER):
        sample = make_sample(problem_id=f"w{worker}-{i}")
        started = time.monotonic()
        try:
            await queue.put(sample)
            ledger.confirmed.add(sample.sample_id)
            ledger.slowest_put_s = max(ledger.slowest_put_s, time.monotonic() - started)
        except Exception as exc:  # counted: the test fails on any
            ledger.errors[f"put {type(exc).__name__} {exc}"] += 1
        await asyncio.sleep(PUT_INTERVAL_S)


async def consume(queue: SampleQueue, ledger: Ledger, stop: asyncio.Event) -> None:
    """The trainer's contract: commit the step, then ack."""
    while not stop.is_set():
        try:
            batch = await queue.read(5, block_ms=200)
        except Exception as exc:
            ledger.errors[f"read {type(exc).__name__} {exc}"] += 1
            await asyncio.sleep(0.2)
            continue
        ids = [d.sample.sample_id for d in batch]
        ledger.acked_redelivered += sum(i in ledger.acked for i in ids)
        ledger.committed.extend(ids)
        try:
            await queue.ack([d.id for d in batch])
            ledger.acked.update(ids)
        except Exception as exc:
            ledger.errors[f"ack {type(exc).__name__}"] += 1


async def restart(server: EmbeddedRedis, crash: bool) -> None:
    # In a thread: the event loop keeps running, so the clients live through the outage.
    await asyncio.to_thread(server.kill if crash else server.stop)
    await asyncio.sleep(DOWNTIME_S)
    await asyncio.to_thread(server.start)


async def test_redis_restarts_lose_and_redo_nothing(tmp_path: Path, figures: Figures) -> None:
    server = EmbeddedRedis(tmp_path / "redis").start()
    producer_client = connect(server.url, timeout_s=2)
    consumer_client = connect(server.url, timeout_s=2)
    try:
        producer = SampleQueue(producer_client, "samples", "trainer")
        # Deliveries whose reply was lost in the crash stay pending: reclaim them quickly.
        consumer = SampleQueue(consumer_client, "samples", "trainer", consumer="t0", claim_idle_s=1)
        await consumer.ensure_group()
        ledger = Ledger()
        stop = asyncio.Event()
        consuming = asyncio.create_task(consume(consumer, ledger, stop))
        producing = asyncio.gather(*(produce(producer, w, ledger) for w in range(PRODUCERS)))

        run_s = PER_PRODUCER * PUT_INTERVAL_S
        await asyncio.sleep(run_s / 3)
        await restart(server, crash=True)
        await asyncio.sleep(run_s / 3)
        await restart(server, crash=False)
        await asyncio.wait_for(producing, timeout=120)

        deadline = asyncio.get_running_loop().time() + 60
        while not ledger.confirmed <= ledger.acked:
            assert asyncio.get_running_loop().time() < deadline, "confirmed samples not consumed"
            await asyncio.sleep(0.2)
        stop.set()
        await asyncio.wait_for(consuming, timeout=30)
        stats = await consumer.stats()
    finally:
        await producer_client.aclose()
        await consumer_client.aclose()
        server.stop()

    lost = len(ledger.confirmed - ledger.acked)
    trained_twice = sum(n > 1 for n in Counter(ledger.committed).values())
    figures.report(
        faults=2,
        appended=len(ledger.confirmed),
        consumed=len(ledger.acked),
        lost=lost,
        acked_redone=ledger.acked_redelivered,
        trained_twice=trained_twice,
        client_errors=dict(ledger.errors),
        slowest_put_s=round(ledger.slowest_put_s, 2),
        left_in_stream=stats.length,
    )
    assert not ledger.errors, f"clients raised instead of retrying: {dict(ledger.errors)}"
    assert len(ledger.confirmed) == PRODUCERS * PER_PRODUCER
    assert lost == 0
    assert trained_twice == 0, "a sample was delivered and committed twice"
    assert ledger.acked_redelivered == 0
    assert (stats.length, stats.pending) == (0, 0)
    # A put that spanned an outage waited for the restart: it was retried, not failed.
    assert ledger.slowest_put_s > DOWNTIME_S / 2
