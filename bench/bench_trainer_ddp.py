"""Trainer throughput, one process against a torchrun job of N (DDP on gloo, CPU; FSDP2 on GPUs):
the real `gvloop trainer run`, on the same samples from a private Redis, side by side in one run.

Samples/s is taken from the trainer's own step records (batch in hand -> step done), after
burn-in steps, so it leaves out start-up, batch gathering and checkpoints. On a CPU machine with
few cores the ranks share the same cores: the figure is no measure of a GPU per rank. It shows
the cost of the split and the all-reduce, and, on a model as small as the tiny one, the cores
that one process' intra-op threads leave idle (its matmuls are too small to keep them busy).

    python bench/bench_trainer_ddp.py --processes 2 --steps 6
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from gvloop.tiny_model import make_tiny_model
from services.queue import SampleQueue
from services.redis_server import EmbeddedRedis, connect
from services.schemas import ChatMessage, Feedback, Sample, SamplingParams
from services.settings import CommonSettings

BURN_IN = 2


def samples(n: int, completion_tokens: int) -> list[Sample]:
    return [
        Sample(
            problem_id=f"p{i}",
            problem="What is 2 + 3?",
            messages=[ChatMessage(role="user", content="What is 2 + 3?")],
            prompt_token_ids=list(range(1, 17)),
            completion_token_ids=[(31 * i + t) % 1000 + 20 for t in range(completion_tokens)],
            sampling=SamplingParams(),
            solution="5",
            feedback=Feedback(solution_score=1.0, reasoning_score=0.5, is_correct=i % 2 == 0),
            weight_version=0,
            model="bench",
        )
        for i in range(n)
    ]


async def fill(redis_url: str, stream: str, batch: list[Sample]) -> None:
    client = connect(redis_url)
    queue = SampleQueue(client, stream, "trainer", max_backlog=len(batch))
    for sample in batch:
        await queue.put(sample)
    await client.aclose()


def threads(processes: int, per_rank: int) -> int:
    """Torch threads per rank: `per_rank`, or 0 for the machine's cores split among the ranks."""
    return per_rank or max(1, (os.cpu_count() or 1) // processes)


def run_trainer(
    processes: int, model: Path, redis_url: str, stream: str, work: Path, steps: int,
    batch_size: int, per_rank: int,
) -> tuple[float, float]:  # fmt: skip
    """(samples/s over the steps after burn-in, wall seconds of the whole job)."""
    plain = [sys.executable, "-m", "gvloop", "trainer", "run"]
    distributed = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={processes}", "-m", "gvloop", "trainer", "run",
    ]  # fmt: skip
    data_dir = work / stream.replace(":", "-")
    env = {
        **os.environ,
        "GVLOOP_MODEL": str(model),
        "GVLOOP_DATA_DIR": str(data_dir),
        "GVLOOP_REDIS_URL": redis_url,
        "GVLOOP_STREAM": stream,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": str(threads(processes, per_rank)),
        "GVLOOP_TRAINER_BATCH_SIZE": str(batch_size),
        "GVLOOP_TRAINER_MICRO_BATCH_SIZE": str(max(1, batch_size // 2)),
        "GVLOOP_TRAINER_MAX_STEPS": str(steps),
        "GVLOOP_TRAINER_CHECKPOINT_EVERY": str(steps),
        "GVLOOP_TRAINER_SWAP": "false",
        "GVLOOP_TRAINER_PROGRESS": "off",
        "GVLOOP_TRAINER_METRICS_PORT": "0",
    }
    started = time.perf_counter()
    log = data_dir.with_suffix(".log")
    with log.open("wb") as out:
        command = plain if processes == 1 else distributed
        if subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT).returncode:
            sys.exit(f"the trainer failed; see {log}")
    wall = time.perf_counter() - started
    records = (data_dir / "trainer" / "metrics.jsonl").read_text().splitlines()
    step_records = [e for e in map(json.loads, records) if e["event"] == "step"][BURN_IN:]
    seconds = sum(e["seconds"] for e in step_records)
    return sum(e["samples"] for e in step_records) / seconds, wall


def main(
    processes: Annotated[int, typer.Option(help="Processes of the torchrun job.")] = 2,
    steps: Annotated[int, typer.Option(help="Steps per run, burn-in included.")] = 6,
    batch_size: Annotated[int, typer.Option(help="Samples per step.")] = 8,
    tokens: Annotated[int, typer.Option(help="Tokens per completion.")] = 128,
    rounds: Annotated[int, typer.Option(help="Runs of each, taking turns; the best counts.")] = 2,
    threads_per_rank: Annotated[
        int, typer.Option(help="Torch threads per process; 0: the cores split among them.")
    ] = 0,
    model: Annotated[str, typer.Option(help="An HF model directory; default: the tiny one.")] = "",
) -> None:
    """Print samples/s of the trainer for 1 and N processes."""
    assert steps > BURN_IN, f"--steps must exceed the {BURN_IN} burn-in steps"
    with tempfile.TemporaryDirectory(prefix="gvloop-bench-ddp-") as tmp:
        work = Path(tmp)
        model_dir = Path(model) if model else make_tiny_model(
            work / "tiny", data_dir=CommonSettings().data_dir
        )  # fmt: skip
        best: dict[int, tuple[float, float]] = {}
        with EmbeddedRedis(work / "redis") as redis:
            # the two take turns, best of the rounds: other load on the machine comes and goes
            for round_ in range(rounds):
                for n in (1, processes):
                    stream = f"bench:{n}:{round_}"
                    asyncio.run(fill(redis.url, stream, samples(batch_size * steps, tokens)))
                    rate, wall = run_trainer(
                        n, model_dir, redis.url, stream, work, steps, batch_size, threads_per_rank
                    )
                    best[n] = max(best.get(n, (0.0, 0.0)), (rate, wall))
    cores = os.cpu_count() or 1
    print(f"trainer on {model_dir.name}, {cores} CPU cores, batch {batch_size}, "
          f"{tokens} completion tokens, {steps - BURN_IN} timed steps")  # fmt: skip
    print("| processes | threads each | samples/s | vs 1 process | job wall time |")
    print("| --- | --- | --- | --- | --- |")
    for n, (rate, wall) in best.items():
        speedup = rate / best[1][0]
        print(
            f"| {n} | {threads(n, threads_per_rank)} | {rate:.2f} | {speedup:.2f}x | {wall:.0f} s |"
        )
    if cores < 2 * processes:
        print(f"note: {processes} ranks share {cores} cores; no figure of a GPU per rank. A gain "
              "here is cores one process leaves idle (a small model's matmuls do not keep "
              "several threads busy), a loss the cost of the split and the all-reduce")  # fmt: skip


if __name__ == "__main__":
    typer.run(main)
