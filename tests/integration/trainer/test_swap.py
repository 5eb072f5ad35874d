"""The swap publisher against a real HTTP server standing in for agent A's POST /weights: it
sends the token and the checkpoint, retries while agent A is down or busy, sends only the newest
checkpoint after an outage, and gives up on a refusal without ever raising."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gvloop.launcher import free_ports
from services.clients import GeneratorClient, RetryPolicy
from services.schemas import SwapRequest
from tests.integration.trainer.stub import swap_recorder
from tests.utils.serve import serve_app
from tests.utils.waits import until
from trainer.metrics import TrainerMetrics
from trainer.swap import SwapPublisher

TOKEN = "swap-token"
FAST = RetryPolicy(backoff_s=0.05, max_backoff_s=0.2)


def publisher(url: str, tmp_path: Path) -> SwapPublisher:
    client = GeneratorClient(url, TOKEN, timeout_s=10, policy=RetryPolicy(attempts=1))
    return SwapPublisher(client, TrainerMetrics(tmp_path / "m.jsonl"), 0, FAST)


def outcomes(p: SwapPublisher, outcome: str) -> float:
    value = p.metrics.registry.get_sample_value("gvloop_trainer_swaps_total", {"outcome": outcome})
    return value or 0.0


async def test_swap_sends_the_checkpoint_with_the_token(tmp_path: Path) -> None:
    calls: list[SwapRequest] = []
    with serve_app(swap_recorder(calls, token=TOKEN)) as url:
        p = publisher(url, tmp_path)
        p.start()
        p.publish(tmp_path / "step_00000001", 1)
        await until(lambda: p.served_version == 1)
        await p.stop()
    assert calls == [SwapRequest(checkpoint_dir=str(tmp_path / "step_00000001"), version=1)]
    assert outcomes(p, "ok") == 1 and not p.pending
    (event,) = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    # how long agent A stopped generating, and the run's spread of it so far
    assert (event["event"], event["stopped_s"]) == ("swap", 0.04)
    assert event["stopped"] == {"count": 1, "p50": 0.04, "p95": 0.04, "max": 0.04}
    stopped = p.metrics.registry.get_sample_value(
        "gvloop_trainer_swap_generation_stopped_seconds_bucket", {"le": "0.05"}
    )
    assert stopped == 1


async def test_busy_agent_a_is_retried(tmp_path: Path) -> None:
    calls: list[SwapRequest] = []
    # 502: an engine failed to load and recovered; 409: a swap already in progress
    with serve_app(swap_recorder(calls, [502, 409], TOKEN)) as url:
        p = publisher(url, tmp_path)
        p.start()
        p.publish(tmp_path / "step_00000002", 2)
        await until(lambda: p.served_version == 2)
        await p.stop()
    assert len(calls) == 3 and outcomes(p, "failed") == 2


async def test_agent_a_down_then_up_gets_only_the_newest_checkpoint(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    calls: list[SwapRequest] = []
    p = publisher(f"http://127.0.0.1:{port}", tmp_path)
    p.start()
    p.publish(tmp_path / "step_00000001", 1)
    await until(lambda: outcomes(p, "failed") >= 2)  # connection refused, retried
    p.publish(tmp_path / "step_00000002", 2)  # supersedes version 1
    await until(lambda: outcomes(p, "failed") >= 3)
    assert p.served_version == 0 and p.pending
    with serve_app(swap_recorder(calls, token=TOKEN), port=port):
        await until(lambda: p.served_version == 2)
        await p.stop()
    assert [c.version for c in calls] == [2]


@pytest.mark.parametrize("status", [403, 422])
async def test_a_refused_checkpoint_is_not_retried(tmp_path: Path, status: int) -> None:
    calls: list[SwapRequest] = []
    with serve_app(swap_recorder(calls, [status], TOKEN)) as url:
        p = publisher(url, tmp_path)
        p.start()
        p.publish(tmp_path / "elsewhere", 1)
        await until(lambda: outcomes(p, "refused") == 1)
        await asyncio.sleep(0.5)  # several backoff periods: no retry comes
        assert len(calls) == 1 and p.served_version == 0 and not p.pending
        # the next checkpoint is offered as usual
        p.publish(tmp_path / "step_00000002", 2)
        await until(lambda: p.served_version == 2)
        await p.stop()


async def test_stop_waits_a_grace_period_for_the_pending_swap(tmp_path: Path) -> None:
    calls: list[SwapRequest] = []
    with serve_app(swap_recorder(calls, [503], TOKEN)) as url:
        p = publisher(url, tmp_path)
        p.start()
        p.publish(tmp_path / "step_00000009", 9)
        await p.stop(grace_s=30)  # the end of a run: its final weights reach agent A
    assert len(calls) == 2 and p.served_version == 9
