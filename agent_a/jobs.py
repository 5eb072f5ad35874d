"""Asynchronous generation jobs: POST /problems with `wait: false` answers with a job id at
once; the job runs here and its status (then its result) lives in the JobStore."""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from agent_a.errors import AgentAError, DependencyUnavailableError, QueueBusyError
from agent_a.generation import Generator
from agent_a.store import JobStore
from services.schemas import GenerateRequest, JobStatus, new_id, utcnow

logger = logging.getLogger(__name__)


class JobRunner:
    def __init__(
        self, store: JobStore, generator: Generator, max_running: int, retry_after_s: int
    ) -> None:
        self.store = store
        self.generator = generator
        self.max_running = max_running
        self.retry_after_s = retry_after_s
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, request: GenerateRequest) -> JobStatus:
        """Record a pending job and start it; 429 when `max_running` jobs already run."""
        if len(self._tasks) >= self.max_running:
            raise QueueBusyError(
                f"{len(self._tasks)} jobs are running, the most this generator runs at once",
                self.retry_after_s,
            )
        job = JobStatus(job_id=new_id(), state="pending", created_at=utcnow())
        try:
            await self.store.save(job)
        except RedisError as exc:
            raise DependencyUnavailableError(f"Redis (job store) failed: {exc}") from exc
        task = asyncio.create_task(self._run(job, request), name=f"job-{job.job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        logger.info(
            "job %s: %d problems x %d samples", job.job_id, len(request.problems), request.n
        )
        return job

    async def _run(self, job: JobStatus, request: GenerateRequest) -> None:
        try:
            await self.store.save(job.model_copy(update={"state": "running"}))
            result = await self.generator.generate(request)
            finished = job.model_copy(update={"state": "done", "result": result})
        except AgentAError as exc:
            finished = job.model_copy(update={"state": "failed", "error": exc.detail})
        except asyncio.CancelledError:
            finished = job.model_copy(
                update={"state": "failed", "error": "the generator stopped before the job ended"}
            )
            await self._finish(finished)
            raise
        except Exception as exc:
            logger.exception("job %s failed", job.job_id)
            finished = job.model_copy(update={"state": "failed", "error": repr(exc)[:2000]})
        await self._finish(finished)

    async def _finish(self, job: JobStatus) -> None:
        job = job.model_copy(update={"finished_at": utcnow()})
        try:
            await self.store.save(job)
        except RedisError as exc:
            logger.error(
                "job %s ended (%s) but could not be recorded: %s", job.job_id, job.state, exc
            )
            return
        logger.info("job %s %s%s", job.job_id, job.state, f": {job.error}" if job.error else "")

    async def aclose(self) -> None:
        """Cancel running jobs (each records itself as failed)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
