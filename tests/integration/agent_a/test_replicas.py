"""Three generator replicas (each its own app, Generator and Redis client) in front of one engine
and one verifier, writing to one stream with a small bound, under concurrent load while a
consumer drains it slowly: the stream never holds more than the bound, and every sample a
replica answered as queued reached the stream. Room held in one process' memory fails this:
each replica would see the room free and their samples would come back `queued: false`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from services.queue import SampleQueue
from services.redis_server import EmbeddedRedis, connect
from tests.integration.agent_a.conftest import (
    Backends,
    common_settings,
    generator_settings,
    running_generator,
)
from tests.integration.agent_a.helpers import stream_samples

pytestmark = pytest.mark.slow

BOUND = 6
REPLICAS = 3
CLIENTS_PER_REPLICA = 3
LOAD_S = 20.0
BODY = {
    "problems": [{"problem": "What is 2 + 3?", "reference_answer": "5"}],
    "n": 2,
    "sampling": {"temperature": 0.8, "max_tokens": 8},
}


async def test_replicas_share_the_bound_and_queue_every_sample_they_say_they_queued(
    backends: Backends, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    common = common_settings(backends, redis_server, tmp_path).model_copy(
        update={"max_backlog": BOUND}
    )
    redis = connect(redis_server.url)
    consumer = SampleQueue(redis, common.stream, common.group, consumer="drain")
    await consumer.ensure_group()
    said_queued: list[str] = []
    statuses: list[int] = []
    consumed: list[str] = []
    lengths: list[int] = []
    stop = asyncio.Event()

    async def client(url: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            while not stop.is_set():
                response = await http.post("/problems", json=BODY)
                statuses.append(response.status_code)
                if response.status_code == 200:
                    solutions = response.json()["data"][0]["solutions"]
                    assert all(s["queued"] for s in solutions), solutions
                    said_queued.extend(s["sample_id"] for s in solutions)
                else:
                    assert response.status_code == 429, response.text
                    await asyncio.sleep(0.05)

    async def drain() -> None:
        # slower than the replicas produce, so that they keep running into the bound
        while not stop.is_set():
            for delivery in await consumer.read(1, block_ms=100):
                consumed.append(delivery.sample.sample_id)
                await consumer.ack([delivery.id])
            await asyncio.sleep(0.3)

    async def watch() -> None:
        while not stop.is_set():
            lengths.append(await redis.xlen(common.stream))
            await asyncio.sleep(0.005)

    settings = generator_settings(backends)
    async with (
        running_generator(settings, common) as one,
        running_generator(settings, common) as two,
        running_generator(settings, common) as three,
    ):
        urls = [one.url, two.url, three.url]
        tasks = [asyncio.create_task(watch()), asyncio.create_task(drain())]
        tasks += [asyncio.create_task(client(u)) for u in urls for _ in range(CLIENTS_PER_REPLICA)]
        # LOAD_S of load, unless a task fails first
        await asyncio.wait(tasks, timeout=LOAD_S, return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        await asyncio.gather(*tasks)  # a failed assertion in a client surfaces here
        left = await stream_samples(redis, common.stream)
        room = await consumer.room()
    await redis.aclose()

    assert max(lengths) <= BOUND
    assert max(lengths) == BOUND  # the load did reach the bound
    assert statuses.count(429) > 0 and statuses.count(200) > BOUND // BODY["n"]
    # every sample said to be queued was consumed or is still in the stream, once
    assert sorted(said_queued) == sorted(consumed + list(left))
    assert room.reserved == 0  # every reservation was spent or released
