"""Waiting for a condition instead of sleeping for a time the machine may not keep."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


async def until(
    condition: Callable[[], bool | Awaitable[bool]],
    what: str = "the condition",
    timeout_s: float = 60,
    poll_s: float = 0.05,
    check: Callable[[], None] | None = None,
) -> None:
    """Poll until `condition` holds; fail naming `what` at the deadline, or as soon as `check`
    (for example: every component still runs) raises."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if await result if inspect.isawaitable(result) else result:
            return
        if check is not None:
            check()
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f}s"
        await asyncio.sleep(poll_s)


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    """`until` for synchronous tests."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f}s"
        time.sleep(0.05)
