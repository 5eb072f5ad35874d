"""Answer equivalence off the event loop, with deadlines that hold.

math-verify bounds its own work with `signal.alarm`, which only works on a main thread, and
FastAPI runs sync code in worker threads. So comparisons run in a small pool of processes
whose tasks execute on their main thread (math-verify's own timeouts work there), and each one
also has a hard deadline: past it the workers are killed and the pool is rebuilt, so even a
comparison stuck in C code (a huge integer power) cannot hold a request.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from agent_b.rules import as_integer, math_equivalent

logger = logging.getLogger(__name__)


WARM_UP_DEADLINE_S = 120.0  # spawning and importing sympy; slow on a busy machine


class EquivalencePool:
    """`await pool.equivalent(answer, reference)`: True, False, or None when undecided."""

    def __init__(self, workers: int, timeout_s: float) -> None:
        self.workers = workers
        self.timeout_s = timeout_s
        # math-verify's inner timeouts are whole seconds; leave room for a few of them.
        self.inner_timeout_s = max(1, int(timeout_s / 4))
        self.restarts = 0
        self._executor = self._new_executor()
        self._restarting: asyncio.Future[None] | None = None

    def _new_executor(self) -> ProcessPoolExecutor:
        # spawn: the service holds threads (torch, uvicorn) that a fork would copy half-way.
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))

    async def warm_up(self) -> None:
        """Start every worker and import math-verify there, so no request pays for it."""
        await asyncio.gather(
            *(
                self._run("1/2", "0.5", self._executor, WARM_UP_DEADLINE_S)
                for _ in range(self.workers)
            )
        )

    async def equivalent(self, answer: str, reference: str, retry: bool = True) -> bool | None:
        """Integers compare exactly here; anything else goes to math-verify in the pool."""
        left, right = as_integer(answer), as_integer(reference)
        if left is not None and right is not None:
            return left == right
        if self._restarting is not None:  # fresh workers take longer than a comparison may
            await asyncio.shield(self._restarting)
        executor = self._executor
        try:
            return await self._run(answer, reference, executor)
        except BrokenProcessPool:
            # Another comparison's deadline killed the workers under this one: retry once.
            self._replace(executor, "a worker died")
            return await self.equivalent(answer, reference, retry=False) if retry else None
        except TimeoutError:
            self._replace(executor, f"a comparison ran past {self.timeout_s:.0f}s")
            logger.warning(
                "answer comparison undecided after %.0fs (answer %.60r, reference %.60r)",
                self.timeout_s,
                answer,
                reference,
            )
            return None

    async def _run(
        self,
        answer: str,
        reference: str,
        executor: ProcessPoolExecutor,
        deadline_s: float | None = None,
    ) -> bool:
        future = executor.submit(math_equivalent, answer, reference, self.inner_timeout_s)
        return await asyncio.wait_for(asyncio.wrap_future(future), deadline_s or self.timeout_s)

    def _replace(self, executor: ProcessPoolExecutor, why: str) -> None:
        if executor is not self._executor:  # someone else already replaced it
            return
        self.restarts += 1
        logger.warning("restarting the math-verify workers: %s", why)
        self._executor = self._new_executor()
        self._restarting = asyncio.ensure_future(self._rewarm())
        _kill(executor)

    async def _rewarm(self) -> None:
        try:
            await self.warm_up()
        except (TimeoutError, BrokenProcessPool) as exc:
            logger.error("math-verify workers did not restart: %r", exc)

    def close(self) -> None:
        _kill(self._executor)


def _kill(executor: ProcessPoolExecutor) -> None:
    # NOTE: ProcessPoolExecutor has no public way to stop a running task before Python 3.14
    # (`kill_workers`); killing its processes is the only way to end a stuck comparison.
    for process in list((executor._processes or {}).values()):
        process.kill()
    executor.shutdown(wait=False, cancel_futures=True)
