"""The rule workers: answer equivalence and a user's verifier function, off the event loop, with
deadlines that hold.

math-verify bounds its own work with `signal.alarm`, which only works on a main thread, and
FastAPI runs sync code in worker threads; a user's function may block, spin or crash. So both
run in a small pool of processes whose tasks execute on their main thread (math-verify's own
timeouts work there), and each call also has a hard deadline: past it the workers are killed
and the pool is rebuilt, so even a call stuck in C code (a huge integer power, a function that
never returns) cannot hold a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from agent_b.functions import (
    FunctionFailedError,
    FunctionVerdict,
    call_function,
    preload_function,
)
from agent_b.rules import as_integer, math_equivalent
from services.schemas import VerifyRequest

logger = logging.getLogger(__name__)
T = TypeVar("T")

WARM_UP_DEADLINE_S = 120.0  # spawning and importing sympy; slow on a busy machine


class RuleWorkers:
    """`await workers.equivalent(answer, reference)`: True, False, or None when undecided;
    `await workers.call_function(request)`: the user's function's verdict."""

    def __init__(
        self, workers: int, timeout_s: float, function: str | None = None, threshold: float = 0.5
    ) -> None:
        """`function`: the user's verifier function (`module:name` or `file.py:name`);
        `threshold`: is_correct of a function that returns one number, score >= threshold."""
        self.workers = workers
        self.timeout_s = timeout_s
        self.function = function
        self.threshold = threshold
        # math-verify's inner timeouts are whole seconds; leave room for a few of them.
        self.inner_timeout_s = max(1, int(timeout_s / 4))
        self.restarts = 0
        self._executor = self._new_executor()
        # a call's deadline runs from when a worker takes it, not while it waits its turn
        self._slots = asyncio.Semaphore(workers)
        # the workers' warm-up (first or after a restart): a call waits for it, since fresh
        # workers take longer to start than a call may
        self._warming: asyncio.Future[None] | None = None

    def _new_executor(self) -> ProcessPoolExecutor:
        # spawn: the service holds threads (torch, uvicorn) that a fork would copy half-way.
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))

    async def warm_up(self) -> None:
        """Start every worker and import math-verify (and the user's function) there, so no
        request pays for it (without it, the first call starts them)."""
        if self._warming is None:
            self._warming = asyncio.ensure_future(self._warm_all())
        await self._warming

    async def _warm_all(self) -> None:
        await asyncio.gather(*(self._warm_one() for _ in range(self.workers)))

    async def _warm_one(self) -> None:
        executor = self._executor
        await self._run(executor, WARM_UP_DEADLINE_S, math_equivalent, "1/2", "0.5")
        if self.function is not None:
            await self._run(executor, WARM_UP_DEADLINE_S, preload_function, self.function)

    async def equivalent(self, answer: str, reference: str) -> bool | None:
        """Integers compare exactly here; anything else goes to math-verify in the pool."""
        left, right = as_integer(answer), as_integer(reference)
        if left is not None and right is not None:
            return left == right
        try:
            return await self._call(math_equivalent, answer, reference, self.inner_timeout_s)
        except (TimeoutError, BrokenProcessPool):
            logger.warning(
                "answer comparison undecided after %.0fs (answer %.60r, reference %.60r)",
                self.timeout_s,
                answer,
                reference,
            )
            return None

    async def call_function(self, request: VerifyRequest) -> FunctionVerdict:
        """The user's function on one request; FunctionFailedError says what went wrong (it
        raised, returned something else, ran past the deadline, or killed its worker)."""
        assert self.function is not None
        args = (
            self.function,
            request.problem,
            request.solution,
            request.reference_answer,
            request.fields,
            self.threshold,
        )
        try:
            return await self._call(call_function, *args)
        except TimeoutError:
            raise FunctionFailedError(
                f"the verifier function {self.function} did not return within "
                f"{self.timeout_s:g}s (GVLOOP_VERIFIER_RULE_TIMEOUT_S)"
            ) from None
        except BrokenProcessPool:
            raise FunctionFailedError(
                f"the verifier function {self.function} killed the process it ran in"
            ) from None

    async def _call(self, fn: Callable[..., T], *args: Any, retry: bool = True) -> T:
        """`fn(*args)` in the pool under the hard deadline; past it the workers are replaced
        and TimeoutError raised."""
        if self._warming is None:  # spawning workers takes longer than a call may
            self._warming = asyncio.ensure_future(self._warm_all())
        async with self._slots:
            with contextlib.suppress(Exception):  # a warm-up that failed: the call tells why
                await asyncio.shield(self._warming)
            executor = self._executor
            try:
                return await self._run(executor, self.timeout_s, fn, *args)
            except BrokenProcessPool:
                # Another call's deadline killed the workers under this one: retry once.
                self._replace(executor, "a worker died")
                if not retry:
                    raise
            except TimeoutError:
                self._replace(executor, f"a call ran past {self.timeout_s:g}s")
                raise
        return await self._call(fn, *args, retry=False)

    @staticmethod
    async def _run(
        executor: ProcessPoolExecutor, deadline_s: float, fn: Callable[..., T], *args: Any
    ) -> T:
        future = executor.submit(fn, *args)
        return await asyncio.wait_for(asyncio.wrap_future(future), deadline_s)

    def _replace(self, executor: ProcessPoolExecutor, why: str) -> None:
        if executor is not self._executor:  # someone else already replaced it
            return
        self.restarts += 1
        logger.warning("restarting the rule workers: %s", why)
        self._executor = self._new_executor()
        self._warming = asyncio.ensure_future(self._rewarm())
        _kill(executor)

    async def _rewarm(self) -> None:
        try:
            await self._warm_all()
        except (TimeoutError, BrokenProcessPool) as exc:
            logger.error("rule workers did not restart: %r", exc)

    def close(self) -> None:
        _kill(self._executor)


def _kill(executor: ProcessPoolExecutor) -> None:
    # NOTE: ProcessPoolExecutor has no public way to stop a running task before Python 3.14
    # (`kill_workers`); killing its processes is the only way to end a stuck call.
    for process in list((executor._processes or {}).values()):
        process.kill()
    executor.shutdown(wait=False, cancel_futures=True)
