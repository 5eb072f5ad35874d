"""`gvloop trainer run` under `torchrun --nproc-per-node 2` (DDP on gloo, CPU) against the same
run as one plain process, on the same samples from a real Redis: the same batches, losses and
weights, with rank 0 the only consumer; and one rank SIGKILLed mid-step, after which torchrun's
elastic restart resumes from the newest checkpoint with no sample lost or trained twice."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import redis.asyncio as aioredis
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from gvloop.launcher import free_ports
from services.queue import SampleQueue
from services.redis_server import EmbeddedRedis
from tests.utils.samples import make_sample
from trainer import ckpt

pytestmark = pytest.mark.slow  # three trainer jobs on the tiny model, ~1-2 min on 2 cores

BATCH = 4
STEPS = 3
LR = 1e-3


def trainer_env(redis: EmbeddedRedis, stream: str, model: Path, data_dir: Path) -> dict[str, str]:
    (metrics_port,) = free_ports(1)
    return {
        **os.environ,
        "GVLOOP_MODEL": str(model),
        "GVLOOP_DATA_DIR": str(data_dir),
        "GVLOOP_REDIS_URL": redis.url,
        "GVLOOP_STREAM": stream,
        "HF_HUB_OFFLINE": "1",
        # one thread per process in both runs: the comparison is of results, not speed
        "OMP_NUM_THREADS": "1",
        "GVLOOP_TRAINER_BATCH_SIZE": str(BATCH),
        # with 2 ranks, rank 0's shard of 2 samples is one micro-batch, rank 1's too; alone,
        # 4 samples are 2 micro-batches: the accumulation differs, the result must not
        "GVLOOP_TRAINER_MICRO_BATCH_SIZE": "2",
        "GVLOOP_TRAINER_MAX_WAIT_S": "5",
        "GVLOOP_TRAINER_CHECKPOINT_EVERY": "1",
        "GVLOOP_TRAINER_KEEP_CHECKPOINTS": "100",
        "GVLOOP_TRAINER_LR": str(LR),
        "GVLOOP_TRAINER_SWAP": "false",
        "GVLOOP_TRAINER_PROGRESS": "off",
        "GVLOOP_TRAINER_METRICS_PORT": str(metrics_port),
        "GVLOOP_TRAINER_COLLECTIVE_TIMEOUT_S": "60",
    }


def torchrun(nproc: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={nproc}", *extra, "-m", "gvloop", "trainer", "run",
    ]  # fmt: skip


async def put_samples(client: aioredis.Redis, stream: str, n: int) -> list[str]:
    queue = SampleQueue(client, stream, "trainer")
    # distinct lengths and tokens, so that a mix-up or a lost sample changes the result
    return [
        await queue.put(
            make_sample(
                completion_token_ids=[30 + i, *range(40, 40 + i % 5)],
                feedback=make_sample().feedback.model_copy(update={"is_correct": i % 2 == 0}),
            )
        )
        for i in range(n)
    ]


def events(data_dir: Path, kind: str) -> list[dict]:
    path = data_dir / "trainer" / "metrics.jsonl"
    return [e for e in map(json.loads, path.read_text().splitlines()) if e["event"] == kind]


def run_job(command: list[str], env: dict[str, str], log: Path, timeout_s: float = 300) -> None:
    with log.open("wb") as out:
        job = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            returncode = job.wait(timeout=timeout_s)
        finally:
            kill_tree(job)
    assert returncode == 0, log.read_text(errors="replace")[-4000:]


def kill_tree(launcher: subprocess.Popen[bytes]) -> None:
    """The launcher and its ranks, if still there (torchrun's ranks outlive a killed torchrun)."""
    if launcher.poll() is not None:
        return
    for process in psutil.Process(launcher.pid).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    launcher.kill()
    launcher.wait()


# FSDP2 is meant for GPUs (nccl), but runs on gloo too: here it checks the sharded path's
# state dicts (a full checkpoint gathered from the shards) and gradient sync on the CPU
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
async def test_two_ranks_train_the_same_weights_as_one_process(
    redis_server: EmbeddedRedis, redis_client: aioredis.Redis, tiny_model_dir: Path,
    tmp_path: Path, strategy: str,
) -> None:  # fmt: skip
    runs = {}
    for name, command in (
        ("one", [sys.executable, "-m", "gvloop", "trainer", "run"]),
        ("two", torchrun(2)),
    ):
        stream, data_dir = f"test:{name}:{tmp_path.name}", tmp_path / name
        ids = await put_samples(redis_client, stream, BATCH * STEPS)
        env = trainer_env(redis_server, stream, tiny_model_dir, data_dir)
        env.update(GVLOOP_TRAINER_MAX_STEPS=str(STEPS), GVLOOP_TRAINER_STRATEGY=strategy)
        run_job(command, env, tmp_path / f"{name}.log")
        # rank 0 alone consumed, acknowledged after the checkpoints, and left nothing behind
        assert await redis_client.xlen(stream) == 0
        consumers = await redis_client.xinfo_consumers(stream, "trainer")
        assert [c["name"] for c in consumers] == [b"trainer-0"]
        states = [ckpt.read_state(p) for p in ckpt.list_checkpoints(data_dir / "checkpoints")]
        assert [s.step for s in states] == [1, 2, 3]
        assert [i for s in states for i in s.committed_ids] == ids
        runs[name] = (data_dir, states)

    (one, _), (two, _) = runs["one"], runs["two"]
    # the batch loss is the same mean over the same samples: equal up to float rounding
    for a, b in zip(events(one, "step"), events(two, "step"), strict=True):
        assert (a["samples"], a["tokens"]) == (b["samples"], b["tokens"])
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)

    # rank 0's checkpoint is a full, HF-loadable model
    last = f"checkpoints/step_{STEPS:08d}"
    model = AutoModelForCausalLM.from_pretrained(two / last, dtype=torch.float32)
    weights = {"one": load_file(one / last / "model.safetensors"), "two": model.state_dict()}
    base = load_file(tiny_model_dir / "model.safetensors")
    # The runs differ only in the order float32 sums are taken (micro-batches, the all-reduce):
    # a relative ~1e-6 in the gradients, which AdamW's normalised update g / (sqrt(v) + eps)
    # carries through unchanged, except for the odd weight whose gradient is near eps (1e-8),
    # where the update is ill-conditioned. Measured: each tensor's update differs by < 2e-4 of
    # its norm, and 2 of 6.6M weights by more than 1% of lr. So: each tensor's update within
    # 1e-3 of its norm, and at most 1 weight in 100,000 off by lr / 100. A real difference (a
    # sample lost, doubled, or weighted wrong: a quarter of a batch) changes the updates by a
    # tenth of their norm or more.
    assert base.keys() <= weights["one"].keys()
    off, total = 0, 0
    for name, before in base.items():
        update_one = weights["one"][name] - before
        update_two = weights["two"][name] - before
        assert update_one.norm() > 0, name
        gap = (update_one - update_two).norm() / update_one.norm()
        assert gap < 1e-3, f"{name}: the updates differ by {gap:.1e} of their norm"
        off += int(((update_one - update_two).abs() > LR / 100).sum())
        total += before.numel()
    assert off <= total / 100_000, f"{off} of {total} weights differ by more than lr / 100"


def rank_process(launcher: subprocess.Popen[bytes], rank: int) -> psutil.Process | None:
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "gvloop" in child.cmdline():
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def run_and_kill_rank_1(env: dict[str, str], data_dir: Path, log: Path, after_step: int) -> None:
    """torchrun with one restart allowed; rank 1 SIGKILLed once `after_step` is taken."""
    with log.open("wb") as out:
        launcher = subprocess.Popen(
            torchrun(2, "--max-restarts=1"), env=env, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 180
            while not (data_dir / "trainer" / "metrics.jsonl").exists() or not any(
                e["step"] >= after_step for e in events(data_dir, "step")
            ):
                assert launcher.poll() is None, log.read_text(errors="replace")[-4000:]
                assert time.monotonic() < deadline, log.read_text(errors="replace")[-4000:]
                time.sleep(0.05)
            victim = rank_process(launcher, 1)
            assert victim is not None
            victim.send_signal(signal.SIGKILL)
            assert launcher.wait(timeout=300) == 0, log.read_text(errors="replace")[-4000:]
        finally:
            kill_tree(launcher)


async def test_a_rank_killed_mid_run_restarts_the_job_from_the_newest_checkpoint(
    redis_server: EmbeddedRedis, redis_client: aioredis.Redis, tiny_model_dir: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    steps = 6
    stream, data_dir = f"test:kill:{tmp_path.name}", tmp_path / "kill"
    ids = await put_samples(redis_client, stream, BATCH * steps)
    env = trainer_env(redis_server, stream, tiny_model_dir, data_dir)
    env.update(GVLOOP_TRAINER_MAX_STEPS=str(steps), GVLOOP_TRAINER_CHECKPOINT_EVERY="2")
    log = tmp_path / "torchrun.log"
    # step 3 is taken, not checkpointed: the ranks are in step 4, or about to be
    await asyncio.to_thread(run_and_kill_rank_1, env, data_dir, log, 3)

    path = data_dir / "trainer" / "metrics.jsonl"
    runs: list[list[dict]] = []
    for event in map(json.loads, path.read_text().splitlines()):
        if event["event"] == "start":
            runs.append([])
        runs[-1].append(event)
    assert len(runs) == 2, "torchrun did not restart the job"
    resumed = runs[1][0]["step"]
    first_steps, second_steps = ([e["step"] for e in r if e["event"] == "step"] for r in runs)
    # the restart resumed from the newest checkpoint of the killed job, then took each step once
    checkpointed = [e["step"] for e in runs[0] if e["event"] == "checkpoint"]
    assert 3 in first_steps and resumed == max(checkpointed) < max(first_steps)
    assert second_steps == list(range(resumed + 1, steps + 1))
    # every sample committed by exactly one checkpoint, none left pending
    committed = [
        i for p in ckpt.list_checkpoints(data_dir / "checkpoints")
        for i in ckpt.read_state(p).committed_ids
    ]  # fmt: skip
    assert sorted(committed) == sorted(ids)
    assert await redis_client.xlen(stream) == 0
    assert (await redis_client.xpending(stream, "trainer"))["pending"] == 0
    assert "a collective failed or timed out" in log.read_text(errors="replace")


async def test_a_hung_rank_fails_the_job_after_the_collective_timeout(
    redis_server: EmbeddedRedis, redis_client: aioredis.Redis, tiny_model_dir: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    stream, data_dir = f"test:hang:{tmp_path.name}", tmp_path / "hang"
    await put_samples(redis_client, stream, BATCH * 4)
    env = trainer_env(redis_server, stream, tiny_model_dir, data_dir)
    env.update(GVLOOP_TRAINER_MAX_WAIT_S="1", GVLOOP_TRAINER_COLLECTIVE_TIMEOUT_S="5")
    log = tmp_path / "torchrun.log"
    await asyncio.to_thread(hang_rank_1, env, data_dir, log)
    text = log.read_text(errors="replace")
    assert "rank 0: a collective failed or timed out (collective_timeout_s 5)" in text
    # nothing was committed past what the checkpoints hold: the samples wait for the next run
    committed = sum(
        len(ckpt.read_state(p).committed_ids)
        for p in ckpt.list_checkpoints(data_dir / "checkpoints")
    )
    assert await redis_client.xlen(stream) == BATCH * 4 - committed


def hang_rank_1(env: dict[str, str], data_dir: Path, log: Path) -> None:
    """Stop rank 1 (SIGSTOP: alive, silent) after step 1; the job must end on its own."""
    with log.open("wb") as out:
        launcher = subprocess.Popen(torchrun(2), env=env, stdout=out, stderr=subprocess.STDOUT)
        victim = None
        try:
            deadline = time.monotonic() + 180
            while not (data_dir / "trainer" / "metrics.jsonl").exists() or not events(
                data_dir, "step"
            ):
                assert launcher.poll() is None, log.read_text(errors="replace")[-4000:]
                assert time.monotonic() < deadline, log.read_text(errors="replace")[-4000:]
                time.sleep(0.05)
            victim = rank_process(launcher, 1)
            assert victim is not None
            victim.send_signal(signal.SIGSTOP)
            hung_at = time.monotonic()
            # rank 0 times out within collective_timeout_s; torchrun then ends the job
            assert launcher.wait(timeout=120) != 0
            assert time.monotonic() - hung_at < 90
        finally:
            if victim is not None and victim.is_running():
                victim.send_signal(signal.SIGCONT)
            kill_tree(launcher)
