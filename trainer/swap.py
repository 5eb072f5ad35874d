"""Publishing checkpoints to agent A: a background task that asks it to hot-swap (POST /weights)
and retries with backoff while training goes on.

Only the newest checkpoint matters, so a newer one supersedes one still waiting for a retry.
Nothing here raises into the training loop: every failure is one log line, a metric, and a
retry (or, for an answer that retrying cannot change, a wait for the next checkpoint).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from services.clients import GeneratorClient, RetryPolicy, ServiceError
from services.schemas import SwapRequest
from trainer.metrics import TrainerMetrics

logger = logging.getLogger("trainer")

# Agent A is busy (a swap in flight) or failed inside: worth asking again.
RETRY_STATUSES = frozenset({408, 409, 423})


class SwapPublisher:
    def __init__(
        self,
        client: GeneratorClient,
        metrics: TrainerMetrics,
        served_version: int,
        backoff: RetryPolicy,
    ) -> None:
        self.client = client
        self.metrics = metrics
        self.backoff = backoff
        self.served_version = served_version
        """The last version agent A confirmed loading: the staleness reference."""
        self.in_flight: Path | None = None
        """The checkpoint agent A may be reading right now (not to be pruned)."""
        self._wanted: tuple[Path, int] | None = None
        self._changed = asyncio.Event()
        self._settled = asyncio.Event()  # set while no swap is pending
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="swap-publisher")

    def publish(self, checkpoint: Path, version: int) -> None:
        """Ask agent A to load this checkpoint as `version`, replacing any pending request."""
        self._wanted = (checkpoint, version)
        self._settled.clear()
        self._changed.set()

    @property
    def pending(self) -> bool:
        return self._wanted is not None

    async def stop(self, grace_s: float = 0.0) -> None:
        """Stop publishing, after up to `grace_s` for a pending swap to go through."""
        if self.pending and grace_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), grace_s)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.client.aclose()

    async def _run(self) -> None:
        failures = 0
        while True:
            await self._changed.wait()
            self._changed.clear()
            if self._wanted is None:
                continue
            checkpoint, version = self._wanted
            self.in_flight = checkpoint
            cause = await self._swap(checkpoint, version)
            self.in_flight = None
            if cause is None:
                failures = 0
                if self._wanted == (checkpoint, version):
                    self._wanted = None
                    self._settled.set()
                continue
            failures += 1
            delay = self.backoff.delay(failures)
            logger.warning(
                "swap v%d failed: %s; retry %d in %.1fs", version, cause, failures, delay
            )
            # a newer checkpoint cuts the wait short; either way the newest one is tried next
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), delay)
            self._changed.set()

    async def _swap(self, checkpoint: Path, version: int) -> str | None:
        """One POST /weights; returns the cause of a failure worth retrying, else None."""
        started = time.perf_counter()
        request = SwapRequest(checkpoint_dir=str(checkpoint), version=version)
        try:
            response = await self.client.swap(request)
        except ServiceError as exc:
            if exc.status_code >= 500 or exc.status_code in RETRY_STATUSES:
                return self._failed(version, "failed", started, str(exc))
            self._failed(version, "refused", started, str(exc))
            logger.error("swap v%d refused, not retried: %s", version, exc)
            return None
        except Exception as exc:
            # unreachable (ServiceUnavailableError), an answer that is not a SwapResponse, or
            # anything else: training must go on, and a later try may work
            return self._failed(version, "failed", started, f"{type(exc).__name__}: {exc}")
        seconds = time.perf_counter() - started
        self.served_version = max(self.served_version, response.version)
        t = response.timings
        spread = self.metrics.record_swap(
            version, "ok", seconds, response.model_dump_json(), t.stopped_s
        )
        logger.info(
            "swap v%d done in %.2fs (agent A, %s: stage %.2fs while serving, generation stopped "
            "%.2fs, of which loading %.2fs; %d engines; stopped so far: %s) from %s",
            version,
            seconds,
            response.strategy,
            t.stage_s,
            t.stopped_s,
            t.reload_s,
            response.engines,
            spread,
            checkpoint,
        )
        return None

    def _failed(self, version: int, outcome: str, started: float, cause: str) -> str:
        self.metrics.errors.labels("swap").inc()
        self.metrics.record_swap(version, outcome, time.perf_counter() - started, cause)
        return cause
