"""An episode of checkpoints the disk will not take: one warning when it starts, one line when
the trainer holds, one when it ends, whatever the number of tries; the metrics follow it; the
retries while holding back off. And a metrics file on the full disk drops events, said once,
without half a line left for its readers."""

from __future__ import annotations

import errno
import json
import logging
from pathlib import Path

import pytest

from services.clients import RetryPolicy
from tests.utils.disk import file_size_limit
from trainer.ckpt import CheckpointWriteError
from trainer.ckpt_failures import CheckpointFailures, steps_text
from trainer.metrics import TrainerMetrics

FULL = CheckpointWriteError(errno.ENOSPC, "No space left on device", "/data/checkpoints")


@pytest.fixture
def metrics(tmp_path: Path) -> TrainerMetrics:
    return TrainerMetrics(tmp_path / "metrics.jsonl")


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


def test_an_episode_is_said_once_however_many_tries(
    metrics: TrainerMetrics, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trainer")
    failures = CheckpointFailures(metrics, 2, RetryPolicy(backoff_s=1.0, max_backoff_s=8.0))
    # v12 commits steps 11-12 (a checkpoint every 2 steps); then each step tries again
    failures.failed(FULL, 12, 11, 12)
    assert failures.failing and not failures.holding(12) and failures.hold_at == 14
    failures.failed(FULL, 12, 11, 13)
    assert not failures.holding(13)
    for _ in range(5):  # holding at step 14: retried with backoff, no new steps
        failures.failed(FULL, 12, 11, 14)
        assert failures.holding(14)
    assert metrics.checkpoint_failing._value.get() == 1
    assert metrics.checkpoint_failures._value.get() == 7
    assert messages(caplog, logging.WARNING) == [
        "checkpoint v12 could not be written: No space left on device (/data/checkpoints): "
        "keeping the samples of steps 11-12 unacknowledged; retrying each step until step 14, "
        "then reading no new samples and retrying with backoff (at most 8s apart)"
    ]
    assert messages(caplog, logging.INFO) == [
        "holding at step 14: steps 11-14 not committed, no new samples read until checkpoint "
        "v12 is written"
    ]

    caplog.clear()
    failures.written(12, 11, 14)
    metrics.record_checkpoint(14, 12, Path("/data/checkpoints/step_00000014"), 1.0, 16)
    assert not failures.failing and not failures.holding(14)
    assert metrics.checkpoint_failing._value.get() == 0
    (recovered, _checkpoint) = messages(caplog, logging.INFO)
    assert recovered.startswith("checkpoint v12 written after 7 failed attempts over ")
    assert recovered.endswith("s: steps 11-14 committed, training goes on")
    events = [json.loads(line)["event"] for line in metrics.jsonl_path.open()]
    assert events == ["checkpoint_failed"] * 7 + ["checkpoint"]

    # the next episode is said again
    caplog.clear()
    failures.failed(FULL, 13, 15, 15)
    assert len(messages(caplog, logging.WARNING)) == 1


def test_without_retry_steps_the_trainer_holds_at_once_and_backs_off(
    metrics: TrainerMetrics, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="trainer")
    now = [100.0]
    monkeypatch.setattr("trainer.ckpt_failures.time.monotonic", lambda: now[0])
    failures = CheckpointFailures(metrics, 0, RetryPolicy(backoff_s=1.0, max_backoff_s=4.0))
    waits = []
    for _ in range(5):
        failures.failed(FULL, 3, 3, 3)
        assert failures.holding(3)
        waits.append(failures.retry_at - now[0])
    # 1, 2, 4, 4, 4 s, each with its jitter (half to all of it)
    for wait, full in zip(waits, [1, 2, 4, 4, 4], strict=True):
        assert full / 2 <= wait <= full
    assert "reading no new samples and retrying with backoff (at most 4s apart)" in caplog.text


def test_the_failed_stop_says_what_stays_pending(
    metrics: TrainerMetrics, caplog: pytest.LogCaptureFixture
) -> None:
    failures = CheckpointFailures(metrics, 3, RetryPolicy())
    failures.failed(FULL, 5, 9, 10, last=True)
    assert messages(caplog, logging.ERROR) == [
        "stopping: checkpoint v5 could not be written: No space left on device "
        "(/data/checkpoints): steps 9-10 not committed, their samples stay pending and are "
        "trained again after a restart"
    ]
    assert steps_text(4, 4) == "step 4"


def test_a_full_disk_drops_metrics_events_whole_and_says_so_once(
    metrics: TrainerMetrics, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trainer")
    metrics.event("start", step=0)
    size = metrics.jsonl_path.stat().st_size
    # room for part of the next line only: the write is cut short, then taken back
    with file_size_limit(size + 10):
        for step in (1, 2, 3):
            metrics.event("step", step=step, detail="x" * 100)
    assert metrics.jsonl_path.stat().st_size == size
    assert messages(caplog, logging.WARNING) == [
        f"{metrics.jsonl_path}: could not append (File too large); events are dropped until it can"
    ]
    metrics.event("step", step=4)
    lines = [json.loads(line) for line in metrics.jsonl_path.read_text().splitlines()]
    assert [(e["event"], e["step"]) for e in lines] == [("start", 0), ("step", 4)]
    assert messages(caplog, logging.INFO) == [f"{metrics.jsonl_path}: appending events again"]
