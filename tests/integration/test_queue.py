"""SampleQueue against a real Redis server: ordering, batches, ack, redelivery and reclaim,
dead letters, the bound and reservations, Redis outages, and persistence across a Redis crash.
Time on Redis' clock is waited for as a condition, or skipped by ageing pending entries."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from services.queue import PAYLOAD, QueueFullError, Room, SampleQueue
from services.redis_server import EmbeddedRedis, connect
from tests.utils.samples import make_sample
from tests.utils.streams import age_pending, blocked_in_read
from tests.utils.waits import until


async def make_queue(
    client: aioredis.Redis, stream: str, consumer: str = "c1", **kwargs: float
) -> SampleQueue:
    queue = SampleQueue(client, stream, "trainer", consumer=consumer, **kwargs)  # type: ignore[arg-type]
    await queue.ensure_group()
    return queue


async def test_put_then_read_keeps_order(redis_client: aioredis.Redis, stream_name: str) -> None:
    queue = await make_queue(redis_client, stream_name)
    sent = [make_sample(problem_id=f"p{i}") for i in range(5)]
    for sample in sent:
        await queue.put(sample)
    got = await queue.read(10, block_ms=100)
    assert [d.sample.sample_id for d in got] == [s.sample_id for s in sent]
    assert got[0].sample == sent[0]


async def test_a_schema_1_entry_is_delivered_without_logprobs(
    redis_client: aioredis.Redis, stream_name: str
) -> None:
    # what a generator from before schema 2 (no completion_logprobs) left in the stream
    queue = await make_queue(redis_client, stream_name)
    old = json.loads(make_sample().model_dump_json())
    old["schema_version"] = 1
    del old["completion_logprobs"]
    await redis_client.xadd(stream_name, {PAYLOAD: json.dumps(old)})
    (delivery,) = await queue.read(4, block_ms=100)
    assert delivery.sample.sample_id == old["sample_id"]
    assert delivery.sample.completion_logprobs is None
    assert await redis_client.xlen(queue.dead_letter_stream) == 0


async def test_reads_in_batches_and_an_empty_read_returns_nothing(
    redis_client: aioredis.Redis, stream_name: str
) -> None:
    queue = await make_queue(redis_client, stream_name)
    for i in range(10):
        await queue.put(make_sample(problem_id=f"p{i}"))
    sizes = [len(await queue.read(4, block_ms=100)) for _ in range(3)]
    assert sizes == [4, 4, 2]
    assert await queue.read(4, block_ms=200) == []


async def test_a_read_waits_in_redis_for_the_next_sample(
    redis_client: aioredis.Redis, stream_name: str
) -> None:
    queue = await make_queue(redis_client, stream_name)
    reading = asyncio.create_task(queue.read(4, block_ms=60_000))
    try:
        await until(lambda: blocked_in_read(redis_client), "the read blocks in XREADGROUP")
        sent = await queue.put(make_sample())
        got = await asyncio.wait_for(reading, timeout=30)
    finally:
        reading.cancel()
    assert [(d.id, d.redelivered) for d in got] == [(sent, False)]


async def test_ensure_group_again_keeps_the_groups_progress(
    redis_client: aioredis.Redis, stream_name: str
) -> None:
    queue = await make_queue(redis_client, stream_name)
    ids = [await queue.put(make_sample()) for _ in range(3)]
    assert len(await queue.read(2, block_ms=100)) == 2
    await queue.ensure_group()  # BUSYGROUP is not an error
    await make_queue(redis_client, stream_name, consumer="c2")  # another process starting up
    groups = await redis_client.xinfo_groups(stream_name)
    assert [(g["name"], g["pending"], g["last-delivered-id"]) for g in groups] == [
        (b"trainer", 2, ids[1].encode())
    ]
    # delivery goes on where it was: the third sample, not the first again
    assert [d.id for d in await queue.read(2, block_ms=100)] == ids[2:]


async def test_ack_removes_from_pending_and_stream(
    redis_client: aioredis.Redis, stream_name: str
) -> None:
    queue = await make_queue(redis_client, stream_name)
    for i in range(3):
        await queue.put(make_sample(problem_id=f"p{i}"))
    got = await queue.read(3, block_ms=100)
    stats = await queue.stats()
    assert (stats.length, stats.pending) == (3, 3)
    assert stats.oldest_pending_age_s is not None
    assert await queue.ack([d.id for d in got[:2]]) == 2
    stats = await queue.stats()
    assert (stats.length, stats.pending, stats.consumers) == (1, 1, {"c1": 1})


async def test_unacked_samples_of_dead_consumer_are_redelivered(
    redis_client: aioredis.Redis, stream_name: str
) -> None:
    dead = await make_queue(redis_client, stream_name, consumer="dead", claim_idle_s=60)
    alive = await make_queue(redis_client, stream_name, consumer="alive", claim_idle_s=60)
    for i in range(3):
        await dead.put(make_sample(problem_id=f"p{i}"))
    taken = await dead.read(3, block_ms=100)  # then "dies" without acking
    assert len(taken) == 3
    # Not yet idle long enough: nothing for the other consumer.
    assert await alive.read(3, block_ms=50) == []
    await age_pending(redis_client, stream_name, "trainer", "dead", [d.id for d in taken], 61)
    again = await alive.read(3, block_ms=50)
    assert [d.id for d in again] == [d.id for d in taken]
    assert all(d.redelivered for d in again)
    await alive.ack([d.id for d in again])
    assert (await alive.stats()).pending == 0


async def test_reclaim_pages_past_entries_not_idle_yet(
    redis_client: aioredis.Redis, stream_name: str
) -> None:
    queues = {
        name: await make_queue(redis_client, stream_name, consumer=name, claim_idle_s=60)
        for name in ("busy", "dead", "alive")
    }
    ids = [await queues["busy"].put(make_sample()) for _ in range(28)]
    assert len(await queues["busy"].read(25, block_ms=100)) == 25  # in hand, not idle
    assert len(await queues["dead"].read(3, block_ms=100)) == 3
    await age_pending(redis_client, stream_name, "trainer", "dead", ids[25:], 61)
    # XAUTOCLAIM scans 10 entries per one asked for: a page of 2 meets only busy's entries
    first = await queues["alive"].reclaim(2)
    assert [d.id for d in first] == ids[25:27]
    second = await queues["alive"].reclaim(2)
    assert [d.id for d in second] == ids[27:]
    # busy kept its own: only idle ones changed hands
    assert (await queues["alive"].stats()).consumers == {"alive": 3, "busy": 25}


async def test_reclaim_skips_entries_deleted_while_pending(
    redis_client: aioredis.Redis, stream_name: str
) -> None:
    dead = await make_queue(redis_client, stream_name, consumer="dead", claim_idle_s=60)
    alive = await make_queue(redis_client, stream_name, consumer="alive", claim_idle_s=60)
    ids = [await dead.put(make_sample()) for _ in range(3)]
    assert len(await dead.read(3, block_ms=100)) == 3
    assert await alive.read(3, block_ms=50) == []  # running: its own history is read
    await age_pending(redis_client, stream_name, "trainer", "dead", ids, 61)
    await redis_client.xdel(stream_name, ids[0])  # deleted (or trimmed) by someone else
    # the deleted entry takes no room in the batch
    got = await alive.reclaim(2)
    assert [d.id for d in got] == ids[1:]
    await alive.ack(ids[1:])
    # nor does it stay pending (Redis 7 drops it at the claim; Redis 6.2, the embedded server,
    # hands it over: the consumer dead-letters it on its next read)
    assert await alive.read(2, block_ms=100) == []
    stats = await alive.stats()
    assert (stats.length, stats.pending) == (0, 0)


async def test_restarted_consumer_gets_its_own_pending_first(
    redis_client: aioredis.Redis, stream_name: str
) -> None:
    before = await make_queue(redis_client, stream_name, consumer="trainer-0")
    for i in range(5):
        await before.put(make_sample(problem_id=f"p{i}"))
    taken = await before.read(3, block_ms=100)
    # A new process with the same consumer name: the 3 unacked come back, then the 2 new.
    after = await make_queue(redis_client, stream_name, consumer="trainer-0")
    first = await after.read(2, block_ms=100)
    second = await after.read(2, block_ms=100)
    third = await after.read(2, block_ms=100)
    assert [d.id for d in first + second[:1]] == [d.id for d in taken]
    assert [d.redelivered for d in first + second + third] == [True, True, True, False, False]


async def test_unparseable_entries_go_to_dead_letters(
    redis_client: aioredis.Redis, stream_name: str
) -> None:
    queue = await make_queue(redis_client, stream_name)
    await redis_client.xadd(stream_name, {PAYLOAD: b"\xff\xfe not json"})
    bad_score = json.loads(make_sample().model_dump_json())
    bad_score["feedback"]["solution_score"] = 1.5
    await redis_client.xadd(stream_name, {PAYLOAD: json.dumps(bad_score)})
    await redis_client.xadd(stream_name, {"other": "field"})
    good = make_sample()
    await queue.put(good)

    got = await queue.read(10, block_ms=100)
    assert [d.sample.sample_id for d in got] == [good.sample_id]
    stats = await queue.stats()
    assert (stats.dead_letters, stats.length, stats.pending) == (3, 1, 1)
    dead = await redis_client.xrange(queue.dead_letter_stream)
    reasons = [fields[b"reason"].decode() for _, fields in dead]
    assert "Invalid JSON" in reasons[0]
    assert "feedback.solution_score" in reasons[1]
    assert "no 'sample' field" in reasons[2]
    assert dead[0][1][b"raw"].startswith(b"\xef\xbf\xbd")  # raw kept, undecodable bytes replaced


async def test_put_refuses_over_bound_and_never_trims(
    redis_client: aioredis.Redis, stream_name: str
) -> None:
    queue = await make_queue(redis_client, stream_name, max_backlog=3)
    for i in range(3):
        await queue.put(make_sample(problem_id=f"p{i}"))
    with pytest.raises(QueueFullError, match="3 unacknowledged samples"):
        await queue.put(make_sample())
    got = await queue.read(3, block_ms=100)
    assert len(got) == 3  # nothing was trimmed
    with pytest.raises(QueueFullError):  # read but not acked still counts
        await queue.put(make_sample())
    await queue.ack([got[0].id])
    await queue.put(make_sample())


async def test_concurrent_producers_cannot_overshoot_bound(
    redis_client: aioredis.Redis, stream_name: str
) -> None:
    queue = await make_queue(redis_client, stream_name, max_backlog=5)
    results = await asyncio.gather(
        *(queue.put(make_sample()) for _ in range(20)), return_exceptions=True
    )
    assert sum(isinstance(r, str) for r in results) == 5
    assert sum(isinstance(r, QueueFullError) for r in results) == 15
    assert await redis_client.xlen(stream_name) == 5


async def test_room_counts_unacked_samples(redis_client: aioredis.Redis, stream_name: str) -> None:
    queue = await make_queue(redis_client, stream_name, max_backlog=5)
    assert (queue.bound, (await queue.room()).free) == (5, 5)
    for _ in range(2):
        await queue.put(make_sample())
    got = await queue.read(2, block_ms=100)
    assert (await queue.room()).free == 3  # read but not acked still counts
    await queue.ack([got[0].id])
    assert await queue.room() == Room(bound=5, backlog=1, reserved=0)


# Reservations: room held in Redis for samples still being generated, shared by every producer
# (generator replica) of the stream.


async def test_reservations_of_all_producers_count_against_the_bound(
    redis_client: aioredis.Redis, stream_name: str
) -> None:
    one, two = [await make_queue(redis_client, stream_name, max_backlog=5) for _ in range(2)]
    await one.put(make_sample())
    await one.try_reserve(3)
    assert await two.room() == Room(bound=5, backlog=1, reserved=3)
    with pytest.raises(QueueFullError, match="1 unacknowledged samples, 3 reserved") as refused:
        await two.try_reserve(2)  # 1 + 3 + 2 > 5
    assert (refused.value.backlog, refused.value.reserved) == (1, 3)
    await two.try_reserve(1)
    # the free room is gone: an unreserved put would take a slot someone holds
    with pytest.raises(QueueFullError):
        await two.put(make_sample())
    assert await redis_client.xlen(stream_name) == 1


async def test_put_inside_a_reservation_spends_it_and_never_passes_the_bound(
    redis_client: aioredis.Redis, stream_name: str
) -> None:
    queue = await make_queue(redis_client, stream_name, max_backlog=4)
    other = await make_queue(redis_client, stream_name, max_backlog=4)
    async with queue.reserve(3):
        assert (await queue.room()).reserved == 3
        await queue.put(make_sample())
        # one reserved slot became a stream entry: the total stays within the bound
        assert await queue.room() == Room(bound=4, backlog=1, reserved=2)

        def outside(queue: SampleQueue) -> asyncio.Task[str]:
            """A put by another producer: a task that holds no reservation."""
            return asyncio.create_task(queue.put(make_sample()), context=contextvars.Context())

        await outside(other)  # the one free slot, unreserved
        with pytest.raises(QueueFullError):
            await outside(other)  # the 2 left are held for `queue`'s samples
        # tasks started inside the block draw on the reservation too (they copy its context)
        await asyncio.gather(queue.put(make_sample()), queue.put(make_sample()))
        assert await queue.room() == Room(bound=4, backlog=4, reserved=0)
        with pytest.raises(QueueFullError):
            await queue.put(make_sample())  # spent: a fourth sample finds no room
    assert await redis_client.xlen(stream_name) == 4


async def test_leaving_a_reservation_releases_what_it_did_not_spend(
    redis_client: aioredis.Redis, stream_name: str
) -> None:
    queue = await make_queue(redis_client, stream_name, max_backlog=5)
    with pytest.raises(RuntimeError):
        async with queue.reserve(4):
            await queue.put(make_sample())
            raise RuntimeError("generation failed")
    assert await queue.room() == Room(bound=5, backlog=1, reserved=0)
    # outside any reservation, a put is an ordinary one
    await queue.put(make_sample())
    assert (await queue.room()).backlog == 2


async def test_a_dead_producers_reservation_expires_and_a_live_ones_is_renewed(
    redis_client: aioredis.Redis, stream_name: str
) -> None:
    ttl_s = 3.0  # a live one is renewed every second: only a longer stall could expire it
    alive, dead = [
        await make_queue(redis_client, stream_name, max_backlog=5, reservation_ttl_s=ttl_s)
        for _ in range(2)
    ]
    other = await make_queue(redis_client, stream_name, max_backlog=5, reservation_ttl_s=60)
    async with alive.reserve(1):
        await dead.try_reserve(3)  # and never renews nor releases it
        with pytest.raises(QueueFullError) as refused:
            await other.try_reserve(2)
        assert refused.value.reserved == 4

        async def dead_one_expired() -> bool:
            return (await other.room()).reserved < 4

        await until(dead_one_expired, "the dead producer's reservation expires")
        # alive reserved first, for as long: without its renewals it would be gone too
        assert await other.room() == Room(bound=5, backlog=0, reserved=1)
        await other.try_reserve(4)  # the dead producer's room is back
        with pytest.raises(QueueFullError):
            await asyncio.create_task(other.put(make_sample()), context=contextvars.Context())
        await alive.put(make_sample())
    assert await alive.room() == Room(bound=5, backlog=1, reserved=4)


async def test_concurrent_reservations_cannot_overshoot_bound(
    redis_client: aioredis.Redis, stream_name: str
) -> None:
    queues = [await make_queue(redis_client, stream_name, max_backlog=10) for _ in range(3)]

    async def produce(queue: SampleQueue) -> int:
        try:
            async with queue.reserve(3):
                for _ in range(3):
                    await queue.put(make_sample())
        except QueueFullError:
            return 0
        return 3

    queued = await asyncio.gather(*(produce(queues[i % 3]) for i in range(12)))
    # 3 requests of 3 fit in 10, whatever the interleaving... and each put found its room
    assert sum(queued) == await redis_client.xlen(stream_name) == 9


# Redis going away under a queue: its own server, stopped and started by the test.


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[tuple[EmbeddedRedis, aioredis.Redis]]:
    """A server this test may stop, and a client that fails at once while it is down."""
    server = EmbeddedRedis(tmp_path / "redis").start()
    client = connect(server.url, timeout_s=1, retries=0)
    yield server, client
    await client.aclose()
    server.stop()


async def test_renewal_retries_through_an_outage_then_drops_an_expired_reservation(
    own_redis: tuple[EmbeddedRedis, aioredis.Redis], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="services.queue")
    server, client = own_redis
    ttl_s = 1.0
    queue = await make_queue(client, "samples", max_backlog=3, reservation_ttl_s=ttl_s)
    async with queue.reserve(3):
        await asyncio.to_thread(server.stop)
        down_since = time.time()  # no renewal went through after this, on Redis' clock
        await until(lambda: "renewing reservation" in caplog.text, "a renewal fails")
        # down longer than the ttl: Redis finds the reservation expired once it is back
        await until(lambda: time.time() > down_since + ttl_s + 0.1, "the ttl passes")
        await asyncio.to_thread(server.start)
        await until(
            lambda: "expired before its samples were put" in caplog.text,
            "the renewal, retried, finds the reservation gone",
        )
        # it stays gone: the room is free, and this block's puts compete for it
        assert await queue.room() == Room(bound=3, backlog=0, reserved=0)
        other = await make_queue(client, "samples", max_backlog=3)
        await asyncio.create_task(other.put(make_sample()), context=contextvars.Context())
        await queue.put(make_sample())
        assert await queue.room() == Room(bound=3, backlog=2, reserved=0)


async def test_leaving_a_reservation_while_redis_is_down_leaves_it_to_expire(
    own_redis: tuple[EmbeddedRedis, aioredis.Redis],
) -> None:
    server, client = own_redis
    queue = await make_queue(client, "samples", max_backlog=5, reservation_ttl_s=60)
    async with queue.reserve(2):
        await asyncio.to_thread(server.stop)
    # the failed release raised nothing; the reservation holds its room until its ttl ends
    await asyncio.to_thread(server.start)
    # and this task has left it: a put here is an ordinary one, not one of its samples
    await queue.put(make_sample())
    assert await queue.room() == Room(bound=5, backlog=1, reserved=2)


async def test_healthy_until_redis_is_gone(
    own_redis: tuple[EmbeddedRedis, aioredis.Redis],
) -> None:
    server, client = own_redis
    queue = await make_queue(client, "samples")
    assert await queue.healthy()
    server.kill()
    assert not await queue.healthy()


async def test_redis_crash_and_restart_loses_no_appended_sample(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis").start()
    try:
        client = connect(server.url, timeout_s=2, retries=1)
        queue = await make_queue(client, "samples")
        sent = [make_sample(problem_id=f"p{i}") for i in range(50)]
        for sample in sent:
            await queue.put(sample)
        taken = await queue.read(10, block_ms=100)
        await queue.ack([d.id for d in taken])
        await client.aclose()
        server.kill()  # SIGKILL: only the fsynced append-only file survives

        server.start()
        client = connect(server.url)
        queue = await make_queue(client, "samples", consumer="c2")
        got = await queue.read(100, block_ms=100)
        assert [d.sample.sample_id for d in got] == [s.sample_id for s in sent[10:]]
        await client.aclose()
    finally:
        server.stop()
