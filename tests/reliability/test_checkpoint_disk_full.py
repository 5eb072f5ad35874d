"""The checkpoint disk fills up under a running trainer (`gvloop trainer run`, the tiny model, a
real Redis), then space comes back. The disk is full for real, without root: a file size limit
(RLIMIT_FSIZE) put on the trainer's process, so its checkpoint writes fail with EFBIG (the
trainer handles ENOSPC and EDQUOT the same way), and raised again later.

Meanwhile: no partial checkpoint where a swap or a resume looks (the newest one is the one
before), the samples of the steps not committed pending in Redis, the trainer holding at its
bound and reading nothing more, one log line for the whole episode, the metric at 1 and `gvloop
status` saying so. After: the trainer goes on by itself, the next checkpoint commits those
steps, every sample is acknowledged, and none is trained twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from gvloop.launcher import free_ports
from gvloop.status import Target, collect
from services.queue import SampleQueue
from tests.utils.disk import file_size_limit
from tests.utils.figures import Figures
from tests.utils.pipeline import newly_committed
from tests.utils.samples import make_sample
from tests.utils.waits import until
from trainer import ckpt

pytestmark = pytest.mark.slow  # one trainer start-up and 6 steps, ~30 s on 2 cores

BATCH = 4
RETRY_STEPS = 2  # past the failed checkpoint, then the trainer holds
# Under the tiny model's weights (26 MB), over the trainer's log and JSON lines
FILE_SIZE_LIMIT = 1_000_000
FAILED = "could not be written"


def start_trainer(env: dict[str, str], log_file: Path) -> subprocess.Popen[bytes]:
    with log_file.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gvloop", "trainer", "run"],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def test_disk_full_keeps_samples_pending_then_commits_them_once(
    redis_server, redis_client, stream_name, tiny_model_dir: Path, tmp_path: Path, figures: Figures
) -> None:
    (metrics_port,) = free_ports(1)
    root = tmp_path / "checkpoints"
    events_file, log_file = tmp_path / "events.jsonl", tmp_path / "trainer.log"
    env = {
        "GVLOOP_MODEL": str(tiny_model_dir),
        "GVLOOP_DATA_DIR": str(tmp_path),
        "GVLOOP_REDIS_URL": redis_server.url,
        "GVLOOP_STREAM": stream_name,
        "HF_HUB_OFFLINE": "1",
        "GVLOOP_TRAINER_BATCH_SIZE": str(BATCH),
        "GVLOOP_TRAINER_MICRO_BATCH_SIZE": str(BATCH),
        "GVLOOP_TRAINER_MAX_WAIT_S": "30",  # full batches only: the steps' samples are known
        "GVLOOP_TRAINER_CHECKPOINT_EVERY": "1",
        "GVLOOP_TRAINER_KEEP_CHECKPOINTS": "100",  # every commit record, to check
        "GVLOOP_TRAINER_CHECKPOINT_RETRY_STEPS": str(RETRY_STEPS),
        "GVLOOP_TRAINER_CHECKPOINT_MAX_BACKOFF_S": "0.5",
        "GVLOOP_TRAINER_SWAP": "false",
        "GVLOOP_TRAINER_PROGRESS": "off",
        "GVLOOP_TRAINER_METRICS_PORT": str(metrics_port),
        "GVLOOP_TRAINER_METRICS_FILE": str(events_file),
    }
    producer = SampleQueue(redis_client, stream_name, "trainer")
    trainer_metrics = Target(
        name="trainer", health_url=None, metrics_url=f"http://127.0.0.1:{metrics_port}/metrics"
    )

    async def put(n: int, first_token: int) -> list[str]:
        # distinct token ids per sample, so that a mix-up of samples would show in the batches
        return [
            await producer.put(make_sample(completion_token_ids=[first_token + i, 7, 8, 9]))
            for i in range(n)
        ]

    def events(kind: str) -> list[dict]:
        if not events_file.exists():
            return []
        records = [json.loads(line) for line in events_file.read_text().splitlines()]
        return [r for r in records if r["event"] == kind]

    def log() -> str:
        return log_file.read_text(errors="replace")

    process = start_trainer(env, log_file)
    try:

        def alive() -> None:
            assert process.poll() is None, f"trainer exited; its log:\n{log()[-3000:]}"

        async def wait_for(what: str, condition: Callable[[], bool]) -> None:
            await until(condition, what, timeout_s=180, poll_s=0.1, check=alive)

        committed_first = await put(BATCH, 100)
        await wait_for("checkpoint of step 1", lambda: len(events("checkpoint")) == 1)
        first = ckpt.checkpoint_dir(root, 1)

        # The disk fills: steps 2-4 are trained, their checkpoint fails at each, then the
        # trainer holds at step 4 (2 steps past the first failure) and retries with backoff.
        with file_size_limit(FILE_SIZE_LIMIT, process.pid):
            held = await put(3 * BATCH, 200)
            later = await put(2 * BATCH, 300)
            await wait_for(
                "3 failed checkpoints at steps 2-4, then 2 while holding",
                lambda: len(events("checkpoint_failed")) >= 5,
            )
            assert [e["step"] for e in events("step")] == [1, 2, 3, 4]
            # what a swap or a resume would load: the checkpoint before, whole
            assert ckpt.list_checkpoints(root) == [first]
            assert ckpt.read_state(first).committed_ids == committed_first
            # the failed writes took their files with them (a retry may be writing now)
            partial = [p.name for p in root.iterdir() if p.name.startswith(ckpt.TMP_PREFIX)]
            assert all(name.startswith(".tmp-step_00000004-") for name in partial), partial
            # the samples of steps 2-4 unacknowledged, the later ones not even read
            pending = await redis_client.xpending_range(stream_name, "trainer", "-", "+", 100)
            assert sorted(p["message_id"].decode() for p in pending) == sorted(held)
            assert await redis_client.xlen(stream_name) == len(held) + len(later)
            # said once, however many tries
            assert log().count(FAILED) == 1, log()
            assert (
                f"checkpoint v2 {FAILED}: File too large ({root}): keeping the samples of step 2 "
                "unacknowledged; retrying each step until step 4, then reading no new samples "
                "and retrying with backoff (at most 0.5s apart)"
            ) in log()
            assert log().count("holding at step 4: steps 2-4 not committed") == 1
            (status,) = await collect([trainer_metrics])
            assert (status.state, status.healthy) == ("checkpoints failing", False)
            assert status.metrics["gvloop_trainer_checkpoint_failing"] == 1
            assert status.metrics["gvloop_trainer_uncommitted_steps"] == 3
            failed_tries = status.metrics["gvloop_trainer_checkpoint_failures_total"]
            assert failed_tries >= 5

        # Space is back: the next retry commits steps 2-4, and the trainer reads again.
        await wait_for(
            "checkpoints of steps 4, 5 and 6",
            lambda: [e["step"] for e in events("checkpoint")] == [1, 4, 5, 6],
        )
        (status,) = await collect([trainer_metrics])
        assert (status.state, status.healthy) == ("ok", True)
        assert status.metrics["gvloop_trainer_checkpoint_failing"] == 0
        assert status.metrics["gvloop_trainer_uncommitted_steps"] == 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    text = log()
    assert text.count(FAILED) == 1
    (recovered,) = [line for line in text.splitlines() if "failed attempts over" in line]
    assert "checkpoint v2 written after" in recovered
    assert recovered.endswith("s: steps 2-4 committed, training goes on")
    # each sample committed by exactly one checkpoint, the held ones by the one after the episode
    assert newly_committed(root) == [
        sorted(committed_first),
        sorted(held),
        sorted(later[:BATCH]),
        sorted(later[BATCH:]),
    ]
    # and trained once: every step once, as many samples trained as were appended
    steps = events("step")
    assert [e["step"] for e in steps] == [1, 2, 3, 4, 5, 6]
    assert sum(e["samples"] for e in steps) == len(committed_first) + len(held) + len(later)
    assert await redis_client.xlen(stream_name) == 0
    assert (await redis_client.xpending(stream_name, "trainer"))["pending"] == 0
    assert not [p for p in root.iterdir() if p.name.startswith(ckpt.TMP_PREFIX)]
    figures.report(
        failed_tries=int(failed_tries),
        steps_held=RETRY_STEPS + 1,
        samples_held=len(held),
        failure_lines=text.count(FAILED),
        committed_twice=0,
        left_pending=0,
    )
