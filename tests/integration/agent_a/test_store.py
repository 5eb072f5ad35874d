"""Agent A's stores against a real Redis: job records with their TTL, the weights record, and
the key names records written before this module existed are found under."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from agent_a.errors import JobNotFoundError
from agent_a.store import JobStore, WeightsStore
from services.redis_server import EmbeddedRedis
from services.schemas import JobStatus, WeightInfo, new_id, utcnow


async def test_jobs_round_trip_with_their_ttl(
    redis_server: EmbeddedRedis, redis_client: aioredis.Redis, stream_name: str
) -> None:
    store = JobStore(redis_server.url, stream_name, ttl_s=60, timeout_s=2)
    try:
        job = JobStatus(job_id=new_id(), state="pending", created_at=utcnow())
        await store.save(job)
        assert await store.get(job.job_id) == job
        assert 0 < await redis_client.ttl(f"{stream_name}:jobs:{job.job_id}") <= 60
        with pytest.raises(JobNotFoundError, match="unknown, or finished more than 60s ago"):
            await store.get("0123abcd")
    finally:
        await store.aclose()


async def test_weights_record_is_found_where_it_always_was(
    redis_server: EmbeddedRedis, redis_client: aioredis.Redis, stream_name: str
) -> None:
    store = WeightsStore(redis_server.url, stream_name, timeout_s=2)
    try:
        assert await store.load() is None
        # written by an earlier generator, before the store had a client of its own
        earlier = WeightInfo(version=3, checkpoint_dir="/ckpt/step_3")
        await redis_client.set(f"{stream_name}:weights", earlier.model_dump_json())
        assert await store.load() == earlier
        await store.save(WeightInfo(version=4, checkpoint_dir="/ckpt/step_4"))
        assert (await store.load()) == WeightInfo(version=4, checkpoint_dir="/ckpt/step_4")
    finally:
        await store.aclose()
