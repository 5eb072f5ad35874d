"""Faults under load on the running pipeline: the verifier down, agent A down while the trainer
trains, and Redis restarted (crash and clean) while producers and the trainer run. Each test
counts what the clients saw and what the stream and the trainer's checkpoints hold."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx
import pytest

from services.queue import SampleQueue
from services.redis_server import connect
from tests.reliability.pipeline.helpers import (
    AUTH,
    problems,
    queued_ids,
    solutions,
    statuses,
)
from tests.utils.figures import Figures
from tests.utils.pipeline import LocalStack, common, eventually, newly_committed, stream_samples
from tests.utils.samples import make_sample

pytestmark = pytest.mark.slow

CLIENTS = 3
OUTAGE_S = 6
RETRIES_S = 3  # the generator's 3 tries of the verifier, with backoff, fit in this
Result = tuple[float, httpx.Response | BaseException, float]
"""When the answer came, the answer (or what the client raised), how long it took."""


async def load(http: httpx.AsyncClient, tag: str, stop: asyncio.Event, out: list[Result]) -> None:
    """One client posting problems back to back until `stop`, noting when each answer came."""
    i = 0
    while not stop.is_set():
        started = time.monotonic()
        try:
            answer: httpx.Response | BaseException = await http.post(
                "/problems", json=problems(f"{tag}-{i}"), headers=AUTH
            )
        except httpx.HTTPError as exc:
            answer = exc
        out.append((time.monotonic(), answer, time.monotonic() - started))
        i += 1


def ok_after(results: list[Result], since: float) -> bool:
    return any(
        isinstance(r, httpx.Response) and r.status_code == 200 for t, r, _ in results if t > since
    )


async def stream_empty(stack: LocalStack) -> bool:
    client = connect(stack.redis.url)
    try:
        return await client.xlen(common(stack).stream) == 0
    finally:
        await client.aclose()


async def test_verifier_outage_503_nothing_queued_then_recovers(
    pipeline: LocalStack, figures: Figures
) -> None:
    stack = pipeline
    assert not stack.running("trainer")  # the stream is this test's to count
    before = {s.sample_id for s in await stream_samples(stack)}
    results: list[Result] = []
    stop = asyncio.Event()
    async with httpx.AsyncClient(base_url=stack.url("generator"), timeout=120) as http:
        clients = [asyncio.create_task(load(http, f"v{c}", stop, results)) for c in range(CLIENTS)]
        await eventually(lambda: ok_after(results, 0), "a first answer", stack)
        stack.kill("verifier")
        down_at = time.monotonic()
        await asyncio.sleep(OUTAGE_S)  # the load goes on against a dead verifier
        restart_at = time.monotonic()
        await asyncio.to_thread(stack.start, "verifier")
        up_at = time.monotonic()
        await eventually(lambda: ok_after(results, up_at), "a 200 once the verifier is back", stack)
        stop.set()
        await asyncio.gather(*clients)

    # Answered after a request that started at the kill had its retries, before the restart.
    during = [r for t, r, _ in results if down_at + RETRIES_S < t < restart_at]
    refused = [r for r in during if isinstance(r, httpx.Response) and r.status_code == 503]
    reported = {i for _, r, _ in results if isinstance(r, httpx.Response) for i in queued_ids(r)}
    queued = {s.sample_id for s in await stream_samples(stack)} - before
    seen = statuses([r for _, r, _ in results])
    figures.report(
        requests=len(results),
        statuses=dict(seen),
        during_outage=dict(statuses(during)),
        outage_s=round(up_at - down_at, 1),
        samples_queued=len(queued),
        samples_reported_queued=len(reported),
        queued_without_feedback=len(queued - reported),
    )
    assert set(seen) <= {"200", "503"}, seen
    assert during and len(refused) == len(during), statuses(during)
    detail = refused[0].json()["detail"]
    assert "verifier" in detail and "no sample" in detail, detail
    assert queued == reported  # every queued sample came back to its client, verified


async def test_trainer_trains_through_agent_a_outage_and_swap_lands(
    pipeline: LocalStack, figures: Figures
) -> None:
    stack = pipeline
    stack.stop("generator")
    stack.start("trainer")
    settings = common(stack)
    client = connect(stack.redis.url)
    queue = SampleQueue(client, settings.stream, settings.group)
    for i in range(24):  # agent A is down: straight into the stream
        await queue.put(make_sample(problem_id=f"outage-{i}"))
    await client.aclose()

    def failed_swaps() -> int:
        return sum(e["outcome"] != "ok" for e in stack.events("swap"))

    await eventually(
        lambda: len(stack.events("checkpoint")) >= 3 and failed_swaps() >= 2,
        "three checkpoints and two failed swaps",
        stack,
    )
    steps_while_down = len(stack.events("step"))
    failures = failed_swaps()
    newest_while_down = max(e["version"] for e in stack.events("checkpoint"))
    started = time.monotonic()
    await asyncio.to_thread(stack.start, "generator")

    async with httpx.AsyncClient(base_url=stack.url("generator"), timeout=60) as http:

        async def landed() -> bool:
            latest = max(e["version"] for e in stack.events("checkpoint"))
            served = (await http.get("/weights", headers=AUTH)).json()["version"]
            return served == latest

        await eventually(landed, "the newest checkpoint served by agent A", stack)
        served = (await http.get("/weights", headers=AUTH)).json()["version"]
    figures.report(
        steps_while_agent_a_down=steps_while_down,
        swap_failures_retried=failures,
        swap_landed_s=round(time.monotonic() - started, 1),
        served_version=served,
        trainer_alive=stack.running("trainer"),
    )
    assert steps_while_down >= 3
    assert failures >= 2  # the swaps while agent A was down failed, and were retried
    # agent A serves what the trainer made while it was down (or newer), not its old weights
    assert served >= newest_while_down
    assert stack.running("trainer"), "the trainer did not live through the outage"


async def test_redis_restarts_under_load_lose_and_redo_nothing(
    pipeline: LocalStack, figures: Figures
) -> None:
    stack = pipeline
    assert stack.running("trainer") and stack.running("generator")
    root = common(stack).checkpoint_root
    await eventually(lambda: stream_empty(stack), "the stream drained before the test", stack)
    checkpoints_before = len(newly_committed(root))
    results: list[Result] = []
    stop = asyncio.Event()
    async with httpx.AsyncClient(base_url=stack.url("generator"), timeout=120) as http:
        clients = [asyncio.create_task(load(http, f"r{c}", stop, results)) for c in range(CLIENTS)]
        for crash in (True, False):
            await asyncio.sleep(3)
            await asyncio.to_thread(stack.redis.kill if crash else stack.redis.stop)
            await asyncio.sleep(1)
            await asyncio.to_thread(stack.redis.start)
        await asyncio.sleep(3)
        stop.set()
        await asyncio.gather(*clients)
    await eventually(lambda: stream_empty(stack), "every queued sample committed", stack)

    answered = [s for _, r, _ in results if isinstance(r, httpx.Response) for s in solutions(r)]
    # the stream entries the answers name, and the samples a Redis failure left unconfirmed:
    # their append may have landed just before it (so they may be trained), or not
    reported = {s["queue_id"] for s in answered if s["queued"]}
    unconfirmed = sum(not s["queued"] for s in answered)
    per_checkpoint = newly_committed(root)[checkpoints_before:]
    committed = Counter(i for ids in per_checkpoint for i in ids)
    seen = statuses([r for _, r, _ in results])
    figures.report(
        faults=2,
        requests=len(results),
        statuses=dict(seen),
        samples_reported_queued=len(reported),
        samples_unconfirmed=unconfirmed,
        samples_committed=len(committed),
        lost=len(reported - committed.keys()),
        extra=len(committed.keys() - reported),
        committed_twice=sum(n > 1 for n in committed.values()),
        slowest_request_s=round(max(s for _, _, s in results), 1),
    )
    stack.check()  # every component lived through it
    assert "500" not in seen and not any(k.endswith("Error") for k in seen), seen
    assert reported <= committed.keys(), "a sample reported queued was never committed"
    # anything else committed was appended as Redis failed, and reported not queued
    assert len(committed.keys() - reported) <= unconfirmed
    assert max(committed.values()) == 1
