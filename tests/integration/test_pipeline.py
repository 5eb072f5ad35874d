"""The whole pipeline as local processes on a tiny model, the way `gvloop up` runs it:
problems in, samples with feedback in Redis, trainer steps, a checkpoint, a hot swap, and the
generator serving (and recording) the new weight version."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.clients import GeneratorClient
from services.launcher import Launcher
from services.problems import BUILTIN_TRAIN, load_problems
from services.redis_server import EmbeddedRedis
from services.schemas import GenerateRequest, SamplingParams
from services.stack import StackPorts, local_components

pytestmark = pytest.mark.slow


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@pytest.fixture(scope="module")
def pipeline(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    data_dir = tmp_path_factory.mktemp("pipeline")
    engine, generator, verifier, metrics = free_ports(4)
    ports = StackPorts(
        engine=engine, generator=generator, verifier=verifier, trainer_metrics=metrics
    )
    env = {
        "GVLOOP_MAX_BACKLOG": "64",
        "GVLOOP_TRAINER_BATCH_SIZE": "8",
        "GVLOOP_TRAINER_MICRO_BATCH_SIZE": "8",
        "GVLOOP_TRAINER_MAX_WAIT_S": "5",
        "GVLOOP_TRAINER_CHECKPOINT_EVERY": "1",
        "GVLOOP_TRAINER_MAX_STEPS": "0",
    }
    with EmbeddedRedis(data_dir / "redis") as redis, Launcher(data_dir / "logs") as launcher:
        for component in local_components(str(tiny_model_dir), redis.url, data_dir, ports, env):
            launcher.start(component)
        launcher.wait_ready()
        yield {"ports": ports, "data_dir": data_dir, "redis": redis, "launcher": launcher}


async def test_problems_in_samples_trained_weights_swapped(pipeline: dict) -> None:
    ports: StackPorts = pipeline["ports"]
    problems = load_problems(BUILTIN_TRAIN, limit=8)
    async with GeneratorClient(f"http://127.0.0.1:{ports.generator}", timeout_s=300) as client:
        assert (await client.weights()).version == 0
        first = await client.generate(
            GenerateRequest(problems=problems, n=2, sampling=SamplingParams(max_tokens=16, seed=0))
        )
        solutions = [s for r in first.data for s in r.solutions]
        assert len(solutions) == 16
        assert all(s.queued and s.weight_version == 0 for s in solutions)
        assert all(0 <= s.feedback.solution_score <= 1 for s in solutions)

        # The trainer consumes the samples, checkpoints, and asks agent A to swap.
        deadline = time.monotonic() + 300
        while (version := (await client.weights()).version) == 0:
            pipeline["launcher"].check()
            assert time.monotonic() < deadline, "no hot swap within 300s"
            await asyncio.sleep(2)
        assert version >= 1

        after = await client.generate(
            GenerateRequest(problems=problems[:2], sampling=SamplingParams(max_tokens=8))
        )
        assert {s.weight_version for r in after.data for s in r.solutions} == {version}

    checkpoints = sorted((pipeline["data_dir"] / "checkpoints").glob("step_*"))
    assert checkpoints and (checkpoints[-1] / "model.safetensors").exists()
    metrics = (pipeline["data_dir"] / "logs" / "trainer.log").read_text()
    assert "step 1" in metrics, metrics[-2000:]
    json.dumps(after.model_dump(mode="json"))  # the response is plain JSON
