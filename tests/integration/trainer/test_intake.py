"""Sample intake against a real Redis: batches fill up to the size or the wait, stale and
unusable samples are set aside and committed, and a restarted trainer acknowledges what its
checkpoint committed instead of training on it again."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from services.queue import SampleQueue
from services.schemas import SampleGroup
from tests.utils.samples import make_sample
from trainer.intake import Intake, is_stale, no_contrast
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
    intake.trained([d.id for d in first])
    # one good sample left: the batch closes after max_wait_s with what it has
    second = await intake.next_batch(lambda: 3, stop)
    assert [d.id for d in second] == good[4:]
    assert intake.uncommitted == good[:4]
    # the skipped ones are acknowledged at once: nothing of them waits for a checkpoint
    assert await redis_client.xlen(stream_name) == len(good)
    intake.trained([d.id for d in second])

    # the checkpoint commits every step since the last one, then everything is acknowledged
    assert set(intake.commit_ids()) == set(good)
    intake.committed()
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


async def test_a_stop_request_ends_the_wait(redis_client, stream_name, tmp_path: Path) -> None:
    intake = await make_intake(redis_client, stream_name, tmp_path)
    stop = asyncio.Event()
    waiting = asyncio.create_task(intake.next_batch(lambda: 0, stop))
    await asyncio.sleep(0.2)
    stop.set()
    assert await asyncio.wait_for(waiting, timeout=5) == []


async def test_an_idle_wait_returns_no_batch_but_never_cuts_one_short(
    redis_client, stream_name, tmp_path: Path
) -> None:
    # rank 0 of a torchrun job returns between samples to tell the other ranks it is alive
    intake = await make_intake(redis_client, stream_name, tmp_path, max_wait_s=1.5)
    stop = asyncio.Event()
    started = asyncio.get_running_loop().time()
    assert await intake.next_batch(lambda: 0, stop, idle_s=0.2) == []
    assert asyncio.get_running_loop().time() - started < 1.5
    # once the first sample is in, the batch waits max_wait_s for the rest, past idle_s
    producer = SampleQueue(redis_client, stream_name, "trainer")
    first = await producer.put(make_sample())

    async def put_later() -> str:
        await asyncio.sleep(0.6)
        return await producer.put(make_sample())

    later = asyncio.create_task(put_later())
    batch = await intake.next_batch(lambda: 0, stop, idle_s=0.2)
    assert [d.id for d in batch] == [first, await later]
