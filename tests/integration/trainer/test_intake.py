"""Sample intake against a real Redis: batches fill up to the size or the wait, stale and
unusable samples are set aside and committed, a restarted trainer acknowledges what its
checkpoint committed instead of training on it again, a sample handed back to the trainer
holding it is not trained twice, and Redis failures are logged, backed off and retried."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from services.clients import RetryPolicy
from services.queue import SampleQueue
from services.redis_server import EmbeddedRedis, connect
from services.schemas import SampleGroup
from tests.utils.samples import make_sample
from tests.utils.streams import age_pending, blocked_in_read
from tests.utils.waits import until
from trainer.intake import READ_BLOCK_MS, Intake, is_stale, no_contrast
from trainer.metrics import TrainerMetrics

CONSUMER = "trainer-0"


async def make_intake(client: aioredis.Redis, stream: str, tmp_path: Path, **kw) -> Intake:
    queue = SampleQueue(client, stream, "trainer", consumer=CONSUMER)
    await queue.ensure_group()
    fields = {
        "batch_size": 4,
        "max_wait_s": 0.3,
        "max_staleness": 1,
        "max_seq_len": 64,
        "vocab_size": 100,
        **kw,
    }
    return Intake(queue, TrainerMetrics(tmp_path / "metrics.jsonl"), **fields)


@pytest.mark.parametrize(
    ("sample", "served", "max_staleness", "stale"),
    [(5, 5, 0, False), (4, 5, 0, True), (4, 5, 1, False), (2, 5, 2, True), (7, 5, 0, False)],
)
def test_is_stale(sample: int, served: int, max_staleness: int, stale: bool) -> None:
    assert is_stale(sample, served, max_staleness) is stale


async def test_batches_skips_and_commits(redis_client, stream_name, tmp_path: Path) -> None:
    intake = await make_intake(redis_client, stream_name, tmp_path)
    producer = SampleQueue(redis_client, stream_name, "trainer")
    good = [await producer.put(make_sample(weight_version=3)) for _ in range(5)]
    await producer.put(make_sample(weight_version=1))  # stale: served 3, max_staleness 1
    # unusable: token 500 is outside the vocabulary of 100
    await producer.put(make_sample(weight_version=3, completion_token_ids=[500]))
    stop = asyncio.Event()

    first = await intake.next_batch(lambda: 3, stop)
    assert [d.id for d in first] == good[:4]
    intake.record_trained([d.id for d in first])
    # one good sample left: the batch closes after max_wait_s with what it has
    second = await intake.next_batch(lambda: 3, stop)
    assert [d.id for d in second] == good[4:]
    assert intake.uncommitted == good[:4]
    # the skipped ones are acknowledged at once: nothing of them waits for a checkpoint
    assert await redis_client.xlen(stream_name) == len(good)
    intake.record_trained([d.id for d in second])

    # the checkpoint commits every step since the last one, then everything is acknowledged
    assert set(intake.commit_ids()) == set(good)
    intake.mark_committed()
    assert intake.uncommitted == [] and await intake.ack_committed()
    assert await redis_client.xlen(stream_name) == 0
    skips = (tmp_path / "metrics.jsonl").read_text()
    assert skips.count('"reason": "stale"') == 1 and skips.count('"reason": "unusable"') == 1


@pytest.mark.parametrize(
    ("correct", "policy", "skipped"),
    [
        (0, "none", False),
        (0, "all_wrong", True),
        (4, "all_wrong", False),
        (4, "uniform", True),
        (1, "uniform", False),
    ],
)
def test_no_contrast(correct: int, policy, skipped: bool) -> None:
    assert no_contrast(SampleGroup(size=4, correct=correct), policy) is skipped
    assert no_contrast(None, policy) is False  # a sample from an older producer: kept


async def test_groups_without_contrast_are_skipped_and_acknowledged(
    redis_client, stream_name, tmp_path: Path
) -> None:
    intake = await make_intake(redis_client, stream_name, tmp_path, skip_groups="all_wrong")
    producer = SampleQueue(redis_client, stream_name, "trainer")
    all_wrong = SampleGroup(size=2, correct=0)
    mixed = SampleGroup(size=2, correct=1)
    await producer.put(make_sample(group=all_wrong))
    await producer.put(make_sample(group=all_wrong))
    kept = [await producer.put(make_sample(group=mixed)) for _ in range(2)]

    batch = await intake.next_batch(lambda: 0, asyncio.Event())
    assert [d.id for d in batch] == kept
    assert intake.batch_skipped == 2
    assert await redis_client.xlen(stream_name) == len(kept)  # the skipped ones are acked
    assert (tmp_path / "metrics.jsonl").read_text().count('"reason": "no_contrast"') == 2


async def test_restart_acknowledges_what_the_checkpoint_committed(
    redis_client, stream_name, tmp_path: Path
) -> None:
    producer = SampleQueue(redis_client, stream_name, "trainer")
    ids = [await producer.put(make_sample()) for _ in range(3)]
    before = await make_intake(redis_client, stream_name, tmp_path)
    taken = await before.next_batch(lambda: 0, asyncio.Event())
    assert [d.id for d in taken] == ids
    # ...the trainer checkpointed a step on the first two, then died before acknowledging

    after = await make_intake(redis_client, stream_name, tmp_path)
    after.resume(ids[:2])
    # even before the acknowledgement goes through, the committed ones are not handed out again
    again = await after.next_batch(lambda: 0, asyncio.Event())
    assert [(d.id, d.redelivered) for d in again] == [(ids[2], True)]
    assert await after.ack_committed()
    pending = await redis_client.xpending_range(stream_name, "trainer", "-", "+", 10)
    assert [p["message_id"].decode() for p in pending] == [ids[2]]


async def test_a_sample_reclaimed_from_itself_is_not_trained_twice(
    redis_client, stream_name, tmp_path: Path
) -> None:
    intake = await make_intake(redis_client, stream_name, tmp_path, batch_size=2)
    producer = SampleQueue(redis_client, stream_name, "trainer")
    ids = [await producer.put(make_sample()) for _ in range(2)]
    stop = asyncio.Event()
    assert [d.id for d in await intake.next_batch(lambda: 0, stop)] == ids
    intake.record_trained(ids)
    # the checkpoint takes longer than claim_idle_s: XAUTOCLAIM hands them to this consumer again
    idle_s = intake.queue.claim_idle_ms / 1000 + 1
    await age_pending(redis_client, stream_name, "trainer", CONSUMER, ids, idle_s)
    fresh = await producer.put(make_sample())

    assert [d.id for d in await intake.next_batch(lambda: 0, stop)] == [fresh]
    pending = await redis_client.xpending_range(stream_name, "trainer", "-", "+", 10)
    delivered = {p["message_id"].decode(): p["times_delivered"] for p in pending}
    assert delivered == {ids[0]: 2, ids[1]: 2, fresh: 1}  # they did come back
    # neither trained nor set aside again: they wait for their checkpoint, unacknowledged
    assert (intake.uncommitted, intake.unacked, intake.skipped) == (ids, [], 0)


async def test_a_stop_request_ends_the_wait(redis_client, stream_name, tmp_path: Path) -> None:
    intake = await make_intake(redis_client, stream_name, tmp_path)
    stop = asyncio.Event()
    waiting = asyncio.create_task(intake.next_batch(lambda: 0, stop))
    await until(lambda: blocked_in_read(redis_client), "the intake waits in XREADGROUP")
    stop.set()
    assert await asyncio.wait_for(waiting, timeout=30) == []


async def test_an_idle_wait_returns_no_batch_but_never_cuts_one_short(
    redis_client, stream_name, tmp_path: Path
) -> None:
    # rank 0 of a torchrun job returns between samples to tell the other ranks it is alive
    intake = await make_intake(redis_client, stream_name, tmp_path, batch_size=2, max_wait_s=60)
    stop = asyncio.Event()  # never set: only idle_s ends an empty wait
    empty = intake.next_batch(lambda: 0, stop, idle_s=0.2)
    assert await asyncio.wait_for(empty, timeout=30) == []
    # once the first sample is in, the batch waits max_wait_s for the rest, past idle_s
    producer = SampleQueue(redis_client, stream_name, "trainer")
    first = await producer.put(make_sample())
    gathering = asyncio.create_task(intake.next_batch(lambda: 0, stop, idle_s=0.2))
    # long enough for a batch cut short at idle_s to come back (a read blocks a second at most)
    done, _ = await asyncio.wait({gathering}, timeout=0.2 + 2 * READ_BLOCK_MS / 1000)
    assert not done, f"cut short at idle_s: {[d.id for d in gathering.result()]}"
    second = await producer.put(make_sample())
    batch = await asyncio.wait_for(gathering, timeout=30)
    assert [d.id for d in batch] == [first, second]


async def test_redis_failures_are_logged_backed_off_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trainer")
    server = EmbeddedRedis(tmp_path / "redis").start()
    client = connect(server.url, timeout_s=1, retries=0)  # fails at once while Redis is down
    try:
        backoff = RetryPolicy(backoff_s=0.2)
        intake = await make_intake(client, "samples", tmp_path, backoff=backoff)
        producer = SampleQueue(client, "samples", "trainer")
        ids = [await producer.put(make_sample()) for _ in range(3)]
        assert await intake.lag() == 3
        assert [d.id for d in await intake.next_batch(lambda: 0, asyncio.Event())] == ids
        intake.record_trained(ids)
        intake.mark_committed()
        assert await intake.lag() == 0
        await asyncio.to_thread(server.stop)

        assert await intake.ack_committed() is False
        assert intake.unacked == ids  # kept for the next try
        assert await intake.lag() == -1
        # a failed read is a backoff and another try, until stop: the wait goes on
        stop = asyncio.Event()
        started = time.monotonic()
        waiting = asyncio.create_task(intake.next_batch(lambda: 0, stop))

        def read_failures() -> int:
            return sum(r.getMessage().startswith("redis read failed") for r in caplog.records)

        await until(lambda: read_failures() >= 3, "reads fail and are retried")
        stop.set()
        assert await asyncio.wait_for(waiting, timeout=30) == []
        # each failed read sleeps at least half the backoff before the next one
        assert read_failures() <= 1 + (time.monotonic() - started) / (backoff.backoff_s / 2)
        errors = intake.metrics.registry.get_sample_value(
            "gvloop_trainer_errors_total", {"kind": "redis"}
        )
        # every failure (reads, acks, the lag) is one log line and one count
        assert errors == sum(r.getMessage().startswith("redis ") for r in caplog.records)
        assert errors > read_failures()

        await asyncio.to_thread(server.start)
        await until(intake.ack_committed, "the acknowledgement goes through once Redis is back")
        assert intake.unacked == [] and await client.xlen("samples") == 0
    finally:
        await client.aclose()
        server.stop()
