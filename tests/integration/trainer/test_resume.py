"""`gvloop trainer run` as a process on the tiny model and a real Redis: it consumes samples,
steps, checkpoints and acknowledges; SIGKILLed with a step not yet checkpointed and restarted,
it resumes from its checkpoint and retrains that step, so every sample is committed by exactly
one checkpoint and the stream ends empty. Agent A is down all along: swaps fail and are retried
while training goes on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gvloop.launcher import free_ports
from services.queue import SampleQueue
from tests.utils.samples import make_sample
from trainer import ckpt

pytestmark = pytest.mark.slow  # two trainer start-ups, ~30 s on 2 cores


class TrainerProcess:
    def __init__(self, env: dict[str, str], log: Path, events: Path) -> None:
        self.env, self.log, self.events = env, log, events
        self.process: subprocess.Popen[bytes] | None = None

    @contextmanager
    def running(self) -> Iterator[subprocess.Popen[bytes]]:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gvloop", "trainer", "run"],
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            try:
                yield self.process
            finally:
                if self.process.poll() is None:
                    self.process.kill()
                    self.process.wait()

    def read_events(self) -> list[dict]:
        if not self.events.exists():
            return []
        return [json.loads(line) for line in self.events.read_text().splitlines()]

    def wait_for(self, what: str, condition: Callable[[list[dict]], bool], timeout_s=120) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition(self.read_events()):
            assert self.process is not None and self.process.poll() is None, self.tail(what)
            assert time.monotonic() < deadline, self.tail(f"{what}: not within {timeout_s}s")
            time.sleep(0.1)

    def tail(self, what: str) -> str:
        return f"{what}; trainer log:\n{self.log.read_text(errors='replace')[-3000:]}"


def steps(events: list[dict]) -> list[int]:
    return [e["step"] for e in events if e["event"] == "step"]


async def test_killed_trainer_resumes_and_loses_nothing(
    redis_server, redis_client, stream_name, tiny_model_dir: Path, tmp_path: Path
) -> None:
    agent_a_port, metrics_port = free_ports(2)  # nothing listens on agent_a_port
    events_file = tmp_path / "events.jsonl"
    trainer = TrainerProcess(
        {
            "GVLOOP_MODEL": str(tiny_model_dir),
            "GVLOOP_DATA_DIR": str(tmp_path),
            "GVLOOP_REDIS_URL": redis_server.url,
            "GVLOOP_STREAM": stream_name,
            "HF_HUB_OFFLINE": "1",
            "GVLOOP_TRAINER_BATCH_SIZE": "4",
            "GVLOOP_TRAINER_MICRO_BATCH_SIZE": "2",
            "GVLOOP_TRAINER_MAX_WAIT_S": "30",
            "GVLOOP_TRAINER_CHECKPOINT_EVERY": "2",
            "GVLOOP_TRAINER_KEEP_CHECKPOINTS": "100",
            "GVLOOP_TRAINER_GENERATOR_URL": f"http://127.0.0.1:{agent_a_port}",
            "GVLOOP_TRAINER_SWAP_MAX_BACKOFF_S": "1",
            "GVLOOP_TRAINER_METRICS_PORT": str(metrics_port),
            "GVLOOP_TRAINER_METRICS_FILE": str(events_file),
        },
        tmp_path / "trainer.log",
        events_file,
    )
    producer = SampleQueue(redis_client, stream_name, "trainer")

    async def put(n: int, first_token: int) -> list[str]:
        # distinct token ids per sample, so a mix-up of samples would change the batches
        return [
            await producer.put(make_sample(completion_token_ids=[first_token + i, 7, 8, 9]))
            for i in range(n)
        ]

    # Run 1: three batches; step 2 is checkpointed, step 3 is not when the trainer dies.
    ids = await put(12, 100)
    with trainer.running() as process:
        trainer.wait_for("step 3", lambda ev: 3 in steps(ev))
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert [e["step"] for e in trainer.read_events() if e["event"] == "checkpoint"] == [2]
    pending = await redis_client.xpending(stream_name, "trainer")
    assert pending["pending"] == 4  # step 3's samples, never acknowledged

    # Run 2: resumes at step 2, retrains step 3 on the same samples, then the new ones.
    ids += await put(12, 200)
    before = len(trainer.read_events())
    with trainer.running() as process:
        trainer.wait_for("step 6 checkpoint", lambda ev: any(
            e["event"] == "checkpoint" and e["step"] == 6 for e in ev[before:]
        ))  # fmt: skip
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, trainer.tail("exit code")

    second_run = trainer.read_events()[before:]
    assert second_run[0]["event"] == "start" and second_run[0]["step"] == 2
    assert steps(second_run) == [3, 4, 5, 6]
    # the same weights, optimizer state and samples as the killed run's step 3: the same loss
    first_step3, second_step3 = (
        next(e for e in run if e["event"] == "step" and e["step"] == 3)
        for run in (trainer.read_events()[:before], second_run)
    )
    assert second_step3["loss"] == pytest.approx(first_step3["loss"], rel=1e-4)

    # every sample committed by exactly one checkpoint; nothing left in the stream
    committed = [
        stream_id
        for path in ckpt.list_checkpoints(tmp_path / "checkpoints")
        for stream_id in ckpt.read_state(path).committed_ids
    ]
    assert sorted(committed) == sorted(ids)
    assert await redis_client.xlen(stream_name) == 0
    assert (await redis_client.xpending(stream_name, "trainer"))["pending"] == 0

    # agent A never answered: swaps failed and were retried, and training went on
    swaps = [e for e in trainer.read_events() if e["event"] == "swap"]
    assert swaps and all(e["outcome"] == "failed" for e in swaps)
    log = trainer.log.read_text()
    assert "step 6 |" in log and "checkpoint step 6" in log and "trainer stopped" in log
