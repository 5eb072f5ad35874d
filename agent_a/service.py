"""The generator service's parts, built at start-up (the app's lifespan) and closed at shutdown:
the sample queue, agent A's stores, the engine pool, the hot swapper, the generator, the job
runner."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from agent_a.checkpoints import Layout, check_checkpoint, read_layout, resolve_checkpoint
from agent_a.engine_pool import EnginePool
from agent_a.errors import AgentAError
from agent_a.generation import Generator
from agent_a.hotswap import HotSwapper
from agent_a.jobs import JobRunner
from agent_a.metrics import GeneratorMetrics
from agent_a.settings import GeneratorSettings
from agent_a.store import JobStore, WeightsStore
from services.clients import VerifierClient
from services.processes import instance_id
from services.queue import SampleQueue, open_queue
from services.redis_checks import check_redis
from services.redis_server import EmbeddedRedis, ensure_redis
from services.schemas import SwapRequest, SwapResponse, WeightInfo
from services.settings import CommonSettings

logger = logging.getLogger(__name__)


class EngineHealth(BaseModel):
    url: str
    healthy: bool
    version: int
    problem: str | None


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded", "unavailable"]
    model: str
    version: int
    engines: list[EngineHealth]
    redis: bool
    instance: str | None = None
    """The id `gvloop up` started this process with (GVLOOP_INSTANCE_ID): how it knows the
    answer comes from its own child. None when started by hand."""


@dataclass
class GeneratorService:
    common: CommonSettings
    queue: SampleQueue
    job_store: JobStore
    weights_store: WeightsStore
    pool: EnginePool
    swapper: HotSwapper
    generator: Generator
    jobs: JobRunner
    verifier: VerifierClient
    reference: Layout | None
    embedded_redis: EmbeddedRedis | None

    @classmethod
    async def start(
        cls, settings: GeneratorSettings, common: CommonSettings, metrics: GeneratorMetrics
    ) -> GeneratorService:
        redis_url, embedded = ensure_redis(common.redis_url, common.data_dir)
        queue = open_queue(common, redis_url, consumer="generator")
        job_store = JobStore(redis_url, common.stream, settings.job_ttl_s, common.redis_timeout_s)
        weights_store = WeightsStore(redis_url, common.stream, common.redis_timeout_s)
        pool = EnginePool(settings)
        try:
            await check_redis(redis_url, common.redis_timeout_s)  # refuses an evicting Redis
            await queue.ensure_group()
            versions = await pool.connect()
            weights = await _served_weights(weights_store, versions)
        except BaseException:
            await asyncio.gather(
                pool.aclose(), queue.aclose(), job_store.aclose(), weights_store.aclose()
            )
            if embedded is not None:
                embedded.stop()
            raise

        max_swap_s = settings.reload_timeout_s * 2 + settings.control_timeout_s * 6
        swapper = HotSwapper(pool, weights, weights_store, metrics, max_swap_s)
        verifier = VerifierClient(
            settings.verifier_url,
            settings.verifier_token,
            timeout_s=settings.verifier_timeout_s,
            policy=settings.retry,
        )
        generator = Generator(pool, swapper, verifier, queue, metrics, settings)
        jobs = JobRunner(job_store, generator, settings.max_running_jobs, settings.retry_after_s)
        logger.info(
            "generator ready: %s on %d engine(s) at weight version %d, verifier %s, stream %r",
            pool.model,
            len(pool.engines),
            weights.version,
            settings.verifier_url,
            common.stream,
        )
        return cls(
            common,
            queue,
            job_store,
            weights_store,
            pool,
            swapper,
            generator,
            jobs,
            verifier,
            _reference_layout(pool.model_root),
            embedded,
        )

    async def swap(self, request: SwapRequest) -> SwapResponse:
        """Check the checkpoint (inside the root, complete, same tensors), then swap to it."""
        root = self.common.checkpoint_root
        path = resolve_checkpoint(request.checkpoint_dir, root)
        check_checkpoint(path, root, self.reference)
        return await self.swapper.swap(path, request.version, request.strategy)

    async def health(self) -> HealthResponse:
        """Engines answering and in rotation; Redis answering."""
        alive = await asyncio.gather(*(self.pool.is_alive(e) for e in self.pool.engines))
        redis_ok = await self.queue.healthy()
        usable = [ok and e.healthy for e, ok in zip(self.pool.engines, alive, strict=True)]
        status = "ok" if all(usable) else "degraded" if any(usable) else "unavailable"
        return HealthResponse(
            status=status if redis_ok else "unavailable",
            model=self.pool.model,
            version=self.swapper.weights.version,
            engines=[
                EngineHealth(
                    url=e.url,
                    healthy=ok,
                    version=e.version,
                    problem=e.problem or (None if ok else "does not answer /health"),
                )
                for e, ok in zip(self.pool.engines, usable, strict=True)
            ],
            redis=redis_ok,
            instance=instance_id(),
        )

    async def aclose(self) -> None:
        await self.jobs.aclose()
        await asyncio.gather(
            self.verifier.aclose(),
            self.pool.aclose(),
            self.queue.aclose(),
            self.job_store.aclose(),
            self.weights_store.aclose(),
        )
        if self.embedded_redis is not None:
            self.embedded_redis.stop()


async def _served_weights(store: WeightsStore, versions: list[int]) -> WeightInfo:
    """What the engines serve: their version (the oldest, if they disagree) and, when the last
    swap recorded was to that version, its checkpoint (to recover to on failure)."""
    version = min(versions)
    if len(set(versions)) > 1:
        logger.warning(
            "engines serve different weight versions %s: recording v%d", versions, version
        )
    last = await store.load()
    checkpoint = last.checkpoint_dir if last and last.version == version else None
    return WeightInfo(version=version, checkpoint_dir=checkpoint)


def _reference_layout(model_root: str) -> Layout | None:
    """The served model's tensor layout, which every checkpoint must match."""
    try:
        return read_layout(Path(model_root))
    except AgentAError as exc:
        logger.warning(
            "cannot read the served model's weights (%s): checkpoints are checked for "
            "completeness only, not against its tensor names and shapes",
            exc.detail,
        )
        return None
