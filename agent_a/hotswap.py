"""Hot swap: load a checkpoint into every engine without a restart, and never serve half-loaded
weights.

Per swap (the default strategy, stage): every live engine stages the checkpoint while it keeps
serving (reads it and builds the new weights in its own layout, `agent_a.vllm_worker`); only
once all hold it do they all pause (mode=keep: in-flight requests freeze, none is aborted),
flip the staged weights in, set the weight version, reset the prefix cache (KV computed with the
old weights must not be reused) and resume. A pause takes effect once the engine's step in
flight is done (its tokens are generated and sent); from then generation stops, for the flip
alone, and the engines' versions differ only between their resumes. The reload strategy reads
the checkpoint inside the pause instead (the baseline). Each phase is timed.

A failed stage changes nothing: no engine paused. An engine whose host lacks the memory for a
second copy of the weights refuses to stage, and the swap reloads inside the pause instead. If
a flip or reload (or what follows it) fails on any engine, every engine stays paused while they
all reload the last good checkpoint (the base model if none); only engines that got it back
resume. An engine that cannot recover
stays paused and out of rotation, and the swap reports it.

Version recording: a request frozen by the pause finishes on the new weights, so its tokens
span two versions; agent A records the older one (see `EnginePool.chat`). New requests wait
while the engines are paused, so they are recorded with the version that actually serves them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Iterable
from pathlib import Path
from typing import TypeVar

from agent_a.engine_pool import Engine, EnginePool, StageMemoryError
from agent_a.errors import AgentAError, DependencyFailedError, DependencyUnavailableError
from agent_a.metrics import GeneratorMetrics
from agent_a.store import WeightsStore
from services.schemas import SwapResponse, SwapStrategy, SwapTimings, WeightInfo

logger = logging.getLogger(__name__)
T = TypeVar("T")


class HotSwapper:
    def __init__(
        self,
        pool: EnginePool,
        weights: WeightInfo,
        store: WeightsStore,
        metrics: GeneratorMetrics,
        max_swap_s: float,
    ) -> None:
        self.pool = pool
        self.store = store
        self.metrics = metrics
        self.max_swap_s = max_swap_s
        self._weights = weights
        self._lock = asyncio.Lock()  # one swap at a time
        self._idle = asyncio.Event()
        self._idle.set()
        self.pauses = 0
        """Swaps that have paused generation so far: a stream during which it changed had
        its tokens held by one."""
        metrics.weight_version.set_function(lambda: self._weights.version)

    @property
    def weights(self) -> WeightInfo:
        """The version served and its checkpoint (None: the base model the engines started
        with). Only a swap changes it; everything else in agent A reads it here."""
        return self._weights

    async def wait_idle(self) -> None:
        """Hold a new request while a swap runs (bounded: every swap step has a deadline)."""
        try:
            await asyncio.wait_for(self._idle.wait(), self.max_swap_s)
        except TimeoutError:
            raise DependencyUnavailableError(
                f"a weight swap has held generation for {self.max_swap_s:.0f}s"
            ) from None

    async def swap(
        self, checkpoint_dir: Path, version: int, strategy: SwapStrategy = "stage"
    ) -> SwapResponse:
        """Serve `checkpoint_dir` as weight version `version` on every live engine."""
        async with self._lock:
            return await self._swap(str(checkpoint_dir), version, strategy)

    async def _swap(self, path: str, version: int, strategy: SwapStrategy) -> SwapResponse:
        started = time.perf_counter()
        targets = await self._live_engines()
        checked = time.perf_counter()
        if strategy == "stage":
            try:
                await self._stage(targets, path, version)
            except StageMemoryError as exc:
                logger.warning("v%d: %s: reloading inside the pause instead", version, exc)
                strategy = "reload"
        stage_s = time.perf_counter() - checked
        # from here to the resume, new requests wait here: one that reached a paused engine
        # would be served by the new weights but recorded with the old version
        self._idle.clear()
        self.pauses += 1
        try:
            return await self._flip(targets, path, version, strategy, started, stage_s)
        finally:
            self._idle.set()

    async def _stage(self, targets: list[Engine], path: str, version: int) -> None:
        """Every engine reads the checkpoint while it serves; a failure changes nothing."""
        try:
            await _all(self.pool.stage(e, path) for e in targets)
        except Exception as exc:
            await asyncio.gather(
                *(self.pool.discard_staged(e) for e in targets), return_exceptions=True
            )
            if isinstance(exc, StageMemoryError):
                raise
            self.metrics.swaps.labels("abandoned").inc()
            logger.error("staging %s as v%d failed, nothing changed: %s", path, version, exc)
            raise DependencyFailedError(
                f"staging {path} as v{version} failed, nothing changed (the engines never paused "
                f"and serve v{self._weights.version}): {exc}"
            ) from exc

    async def _flip(
        self,
        targets: list[Engine],
        path: str,
        version: int,
        strategy: SwapStrategy,
        started: float,
        stage_s: float,
    ) -> SwapResponse:
        """Pause every engine, load (flip the staged weights in, or reload), set the version,
        reset the prefix cache, resume."""
        staged = time.perf_counter()
        try:
            # each engine finishes the step in flight (generating), then stands still
            paused_at = await _all(self._pause(e) for e in targets)
        except Exception as exc:
            await asyncio.gather(*(self.pool.resume(e) for e in targets), return_exceptions=True)
            if strategy == "stage":
                await asyncio.gather(
                    *(self.pool.discard_staged(e) for e in targets), return_exceptions=True
                )
            self.metrics.swaps.labels("abandoned").inc()
            raise DependencyUnavailableError(
                f"swap to v{version} abandoned, nothing changed: {exc}"
            ) from exc
        paused = time.perf_counter()
        load = self.pool.flip if strategy == "stage" else self.pool.reload

        def switch(engine: Engine) -> list[Awaitable[None]]:
            # at once: a paused engine computes nothing, so their order does not matter
            return [
                load(engine, path),
                self.pool.set_version(engine, version),
                self.pool.reset_prefix_cache(engine),
            ]

        try:
            await _all(call for e in targets for call in switch(e))
            loaded = time.perf_counter()
        except Exception as exc:  # whatever broke, no engine may resume on these weights
            logger.error("swap to v%d (%s) failed: %s; recovering", version, path, exc)
            raise await self._recover(targets, path, version, exc) from exc
        for engine in targets:
            engine.version = version
        resumed, not_resumed = await self._resume(targets, f"loaded v{version} but did not resume")
        self._weights = WeightInfo(version=version, checkpoint_dir=path)
        await self.store.save(self._weights)
        done = time.perf_counter()
        timings = SwapTimings(
            stage_s=stage_s,
            pause_s=paused - staged,
            reload_s=loaded - paused,
            resume_s=done - loaded,
            total_s=done - started,
            stopped_s=(max(resumed) if resumed else done) - min(paused_at),
            versions_differ_s=max(resumed) - min(resumed) if resumed else 0.0,
        )
        self._observe(timings)
        logger.info(
            "swapped to v%d (%s, %s) on %d engine(s): stage %.3fs (serving), pause %.3fs (the "
            "step in flight finishing), generation stopped %.3fs (%s %.3fs, resume %.3fs), "
            "versions differed %.3fs, total %.3fs",
            version,
            path,
            strategy,
            len(targets),
            timings.stage_s,
            timings.pause_s,
            timings.stopped_s,
            "flip" if strategy == "stage" else "reload",
            timings.reload_s,
            timings.resume_s,
            timings.versions_differ_s,
            timings.total_s,
        )
        if not_resumed:
            raise DependencyUnavailableError(
                f"swapped to v{version}, but engines {not_resumed} did not resume: out of rotation"
            )
        return SwapResponse(
            version=version,
            checkpoint_dir=path,
            engines=len(targets),
            timings=timings,
            strategy=strategy,
        )

    async def _recover(
        self, targets: list[Engine], path: str, version: int, failure: Exception
    ) -> AgentAError:
        """Reload the last good weights on every target (all still paused); resume those that
        got them back, keep the rest paused and out of rotation."""
        good = self._weights
        source = good.checkpoint_dir or self.pool.model_root
        results = await asyncio.gather(
            *(self._restore(e, source, good.version) for e in targets), return_exceptions=True
        )
        lost = []
        for engine, result in zip(targets, results, strict=True):
            if isinstance(result, Exception):
                engine.healthy = False
                engine.problem = f"paused: could not recover v{good.version} ({result})"
                lost.append(f"{engine.url} ({result})")
            else:
                engine.version = good.version
        self.metrics.swaps.labels("failed").inc()
        cause = f"loading {path} as v{version} failed: {failure}"
        if lost:
            logger.error("%s; engines could not recover and stay paused: %s", cause, lost)
            return DependencyUnavailableError(
                f"{cause}; could not recover v{good.version} ({source}), so these engines stay "
                f"paused, out of rotation: {'; '.join(lost)}"
            )
        logger.warning("%s; every engine is back on v%d (%s)", cause, good.version, source)
        return DependencyFailedError(
            f"{cause}; every engine recovered v{good.version} ({source}) and resumed"
        )

    async def _restore(self, engine: Engine, source: str, version: int) -> None:
        await self.pool.reload(engine, source)
        await self.pool.set_version(engine, version)
        await self.pool.reset_prefix_cache(engine)
        await self.pool.resume(engine)

    async def _pause(self, engine: Engine) -> float:
        """Pause `engine`; returns when it took effect (perf_counter)."""
        await self.pool.pause(engine)
        return time.perf_counter()

    async def _live_engines(self) -> list[Engine]:
        """Engines that answer /health; a dead one is taken out of rotation, not waited for
        (a later swap takes it back once it answers)."""
        alive = await asyncio.gather(*(self.pool.is_alive(e) for e in self.pool.engines))
        targets = []
        for engine, ok in zip(self.pool.engines, alive, strict=True):
            if ok:
                targets.append(engine)
            else:
                engine.healthy = False
                engine.problem = "did not answer /health at the last swap"
        if not targets:
            raise DependencyUnavailableError("no engine answers /health: nothing to swap")
        return targets

    async def _resume(self, targets: list[Engine], problem: str) -> tuple[list[float], list[str]]:
        """Resume every target: when each that resumed did (perf_counter), and those that
        did not (now out of rotation)."""

        async def resume(engine: Engine) -> float:
            await self.pool.resume(engine)
            return time.perf_counter()

        results = await asyncio.gather(*(resume(e) for e in targets), return_exceptions=True)
        resumed, failed = [], []
        for engine, result in zip(targets, results, strict=True):
            engine.healthy = not isinstance(result, BaseException)
            engine.problem = None if engine.healthy else f"{problem}: {result}"
            if isinstance(result, float):
                resumed.append(result)
            else:
                failed.append(engine.url)
        return resumed, failed

    def _observe(self, timings: SwapTimings) -> None:
        self.metrics.swaps.labels("ok").inc()
        for phase in ("stage", "pause", "reload", "resume", "stopped", "total"):
            self.metrics.swap_seconds.labels(phase).observe(getattr(timings, f"{phase}_s"))


async def _all(calls: Iterable[Awaitable[T]]) -> list[T]:
    """Await every call at once; once all are done, raise the first failure, or return their
    results."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]
