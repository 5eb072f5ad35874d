"""Agent A's own records in Redis, beside the sample queue: asynchronous jobs, and the weights
last swapped to. Each store has its own client; keys sit under the stream's name, as they
always have, so records written before a restart or an upgrade are still found."""

from __future__ import annotations

import logging

from redis.exceptions import RedisError

from agent_a.errors import DependencyUnavailableError, JobNotFoundError
from services.redis_server import connect
from services.schemas import JobStatus, WeightInfo

logger = logging.getLogger(__name__)


class JobStore:
    """Job status, then result, under `<namespace>:jobs:<id>` with a TTL, so any generator
    replica can answer GET /jobs/{id} and old results expire on their own."""

    def __init__(self, redis_url: str, namespace: str, ttl_s: int, timeout_s: float) -> None:
        self._client = connect(redis_url, timeout_s=timeout_s)
        self._prefix = f"{namespace}:jobs:"
        self.ttl_s = ttl_s

    async def save(self, job: JobStatus) -> None:
        """Write the job's record (raises RedisError: the caller decides what a loss means)."""
        await self._client.set(self._prefix + job.job_id, job.model_dump_json(), ex=self.ttl_s)

    async def get(self, job_id: str) -> JobStatus:
        try:
            raw = await self._client.get(self._prefix + job_id)
        except RedisError as exc:
            raise DependencyUnavailableError(f"Redis (job store) failed: {exc}") from exc
        if raw is None:
            raise JobNotFoundError(
                f"no job {job_id!r}: unknown, or finished more than {self.ttl_s}s ago"
            )
        return JobStatus.model_validate_json(raw)

    async def aclose(self) -> None:
        await self._client.aclose()


class WeightsStore:
    """The last swap, under `<namespace>:weights`, so a restarted generator knows which
    checkpoint its engines serve and can recover to it after a failed swap."""

    def __init__(self, redis_url: str, namespace: str, timeout_s: float) -> None:
        self._client = connect(redis_url, timeout_s=timeout_s)
        self._key = f"{namespace}:weights"

    async def load(self) -> WeightInfo | None:
        raw = await self._client.get(self._key)
        return WeightInfo.model_validate_json(raw) if raw else None

    async def save(self, weights: WeightInfo) -> None:
        """Record a swap; a failure is logged, not raised: the engines serve it regardless."""
        try:
            await self._client.set(self._key, weights.model_dump_json())
        except RedisError as exc:
            logger.warning("v%d is served but could not be recorded: %s", weights.version, exc)

    async def aclose(self) -> None:
        await self._client.aclose()
