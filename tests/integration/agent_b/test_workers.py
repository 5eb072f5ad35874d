"""math-verify in worker processes: its timeouts work there, and a hard deadline kills a
comparison that runs past it without losing the pool."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from agent_b.workers import RuleWorkers


@pytest.fixture(scope="module")
async def pool() -> AsyncIterator[RuleWorkers]:
    pool = RuleWorkers(workers=1, timeout_s=4)  # math-verify's own timeouts: 1 s
    await pool.warm_up()
    yield pool
    pool.close()


@pytest.mark.parametrize(
    ("answer", "reference", "equal"),
    [
        ("\\frac{1}{2}", "0.5", True),  # in a worker process
        ("2.50", "2.5", True),
        ("3/4", "0.7", False),
        ("1,234", "1234", True),  # integers: decided here, no worker needed
        ("-12", "12", False),
    ],
)
async def test_equivalent(pool: RuleWorkers, answer: str, reference: str, equal: bool) -> None:
    assert await pool.equivalent(answer, reference) is equal


async def test_math_verify_timeouts_work_in_the_workers(pool: RuleWorkers) -> None:
    # sympy would take forever on this; math-verify's signal timeout stops it in the worker,
    # which it could not do on one of FastAPI's threads
    assert await pool.equivalent("9^{9^{9}}", "1") is False
    assert pool.restarts == 0


async def test_hard_deadline_kills_the_comparison_and_the_pool_recovers() -> None:
    pool = RuleWorkers(workers=1, timeout_s=0.5)  # shorter than math-verify's own 1 s
    try:
        await pool.warm_up()
        assert await pool.equivalent("9^{9^{9}}", "1") is None  # undecided, not hung
        assert pool.restarts == 1
        assert await pool.equivalent("\\frac{1}{2}", "0.5") is True  # a fresh worker answers
    finally:
        pool.close()
