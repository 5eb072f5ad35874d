"""The exploration bonus' answer counts on a real Redis: each committed batch is added once however
often it is applied (a restart applies its checkpoint's batches again), they bound their
memory, and a trainer restarted on the real commit path after a crash counts every trained
sample exactly once."""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter
from pathlib import Path

import pytest

from gvloop.launcher import free_ports
from services.queue import SampleQueue
from services.redis_server import connect
from services.settings import CommonSettings
from tests.utils.samples import make_sample
from tests.utils.waits import until
from trainer import ckpt
from trainer.answer_counts import AnswerCountBatch, AnswerCounts
from trainer.exploration import problem_key
from trainer.metrics import TrainerMetrics
from trainer.settings import TrainerSettings
from trainer.train import Worker


def answer_counts(redis_client, stream: str, tmp_path: Path, **bounds: int) -> AnswerCounts:
    return AnswerCounts(
        redis_client,
        stream,
        TrainerMetrics(tmp_path / "metrics.jsonl"),
        max_answers=bounds.get("max_answers", 32),
        max_problems=bounds.get("max_problems", 1000),
    )


async def counts_in_redis(redis_client, stream: str, problem: str) -> dict[str, int]:
    raw = await redis_client.hgetall(f"{stream}:answers:p:{problem}")
    return {k.decode(): int(v) for k, v in raw.items()}


async def test_a_committed_batch_is_counted_once_however_often_it_is_applied(
    redis_client, stream_name: str, tmp_path: Path
) -> None:
    counts = answer_counts(redis_client, stream_name, tmp_path)
    await counts.resume(0, [])
    stop = asyncio.Event()
    counts.record_trained([("x", "5"), ("x", "5"), None, ("x", "7")])
    # trained, not committed: this process counts it, Redis does not
    assert await counts.seen([("x", "5"), ("x", "7"), ("x", "9")], stop) == [2, 1, 0]
    assert await counts_in_redis(redis_client, stream_name, "x") == {}

    batches = counts.commit_batches(1)  # what checkpoint v1 records
    assert batches == [AnswerCountBatch(version=1, counts=[("x", "5", 2), ("x", "7", 1)])]
    counts.mark_committed(batches)
    assert await counts.apply_committed()
    assert await counts_in_redis(redis_client, stream_name, "x") == {"5": 2, "7": 1}
    assert await counts.seen([("x", "5")], stop) == [2]  # from Redis now, not twice

    # a trainer killed after the apply, before the acknowledgement, applies v1 again
    restarted = answer_counts(redis_client, stream_name, tmp_path)
    await restarted.resume(1, batches)
    assert await restarted.seen([("x", "5")], stop) == [2]
    assert await restarted.apply_committed()
    assert await counts_in_redis(redis_client, stream_name, "x") == {"5": 2, "7": 1}

    # the next checkpoint's batch carries on from there
    restarted.record_trained([("x", "7")])
    restarted.mark_committed(restarted.commit_batches(2))
    assert await restarted.apply_committed()
    assert await counts_in_redis(redis_client, stream_name, "x") == {"5": 2, "7": 2}
    assert await restarted.applied_version() == 2


async def test_a_batch_not_yet_applied_is_applied_after_a_restart(
    redis_client, stream_name: str, tmp_path: Path
) -> None:
    counts = answer_counts(redis_client, stream_name, tmp_path)
    await counts.resume(0, [])
    counts.record_trained([("x", "5")])
    batches = counts.commit_batches(1)
    counts.mark_committed(batches)  # checkpoint v1 on disk; killed before the apply
    restarted = answer_counts(redis_client, stream_name, tmp_path)
    await restarted.resume(1, batches)
    assert await restarted.seen([("x", "5")], asyncio.Event()) == [1]  # pending, counted
    assert await restarted.apply_committed()
    assert await counts_in_redis(redis_client, stream_name, "x") == {"5": 1}


async def test_counts_of_a_later_version_are_another_runs_and_dropped(
    redis_client, stream_name: str, tmp_path: Path
) -> None:
    counts = answer_counts(redis_client, stream_name, tmp_path)
    await counts.resume(0, [])
    counts.record_trained([("x", "5")])
    counts.mark_committed(counts.commit_batches(3))
    assert await counts.apply_committed()
    fresh = answer_counts(redis_client, stream_name, tmp_path)
    await fresh.resume(0, [])  # a fresh start (no checkpoint) on the same stream
    assert await fresh.applied_version() == -1
    assert await counts_in_redis(redis_client, stream_name, "x") == {}


async def test_memory_is_bounded(redis_client, stream_name: str, tmp_path: Path) -> None:
    counts = answer_counts(redis_client, stream_name, tmp_path, max_answers=2, max_problems=2)
    await counts.resume(0, [])
    # answers past the second share the pooled count: a third answer is N = pool + this one
    counts.record_trained([("x", "1"), ("x", "2"), ("x", "3"), ("x", "4"), ("x", "4")])
    counts.mark_committed(counts.commit_batches(1))
    assert await counts.apply_committed()
    assert await counts_in_redis(redis_client, stream_name, "x") == {"1": 1, "2": 1, "": 3}
    assert await counts.seen([("x", "1"), ("x", "9")], asyncio.Event()) == [1, 3]
    # a third problem drops the one counted longest ago
    for version, problem in ((2, "y"), (3, "z")):
        counts.record_trained([(problem, "1")])
        counts.mark_committed(counts.commit_batches(version))
        assert await counts.apply_committed()
    assert await counts_in_redis(redis_client, stream_name, "x") == {}
    members = await redis_client.zrange(f"{stream_name}:answers", 0, -1)
    assert sorted(m.decode() for m in members) == ["y", "z"]


async def test_redis_down_keeps_the_batch_for_later(
    redis_client, stream_name: str, tmp_path: Path
) -> None:
    (port,) = free_ports(1)  # nothing listens there
    down = AnswerCounts(
        connect(f"redis://127.0.0.1:{port}", timeout_s=0.2, retries=0),
        stream_name,
        TrainerMetrics(tmp_path / "metrics.jsonl"),
        max_answers=4,
        max_problems=4,
    )
    down.record_trained([("x", "5")])
    batches = down.commit_batches(1)
    down.mark_committed(batches)
    assert not await down.apply_committed()
    assert down.unapplied == batches  # the next step tries again
    stop = asyncio.Event()
    stop.set()
    assert await down.seen([("x", "5")], stop) is None  # a stop request ends the retries
    await down.aclose()


async def test_a_restarted_trainer_counts_each_trained_sample_once(
    redis_client, stream_name: str, common: CommonSettings, tmp_path: Path
) -> None:
    """Steps 1-2 committed (v1), step 3 trained, then the trainer dies; restarted, it adds v1's
    counts from the checkpoint, redoes step 3 with the same bonuses, and step 4 commits (v2):
    the counts hold each of the 16 samples once."""
    cfg = TrainerSettings(
        _env_file=None,  # type: ignore[call-arg]
        batch_size=4,
        micro_batch_size=4,
        max_wait_s=5.0,
        checkpoint_every=2,
        keep_checkpoints=10,
        swap=False,
        metrics_port=0,
        progress="off",
        exploration="count",
        exploration_baseline="none",
    )
    producer = SampleQueue(redis_client, stream_name, common.group)
    # per batch: problem p answered 1 twice and 2 once, problem q without an answer
    problems, answers = ["p", "p", "p", "q"] * 4, ["1", "1", "2", None] * 4
    events_file = tmp_path / "trainer" / "metrics.jsonl"

    def steps() -> list[dict]:
        events = [json.loads(line) for line in events_file.open()] if events_file.exists() else []
        return [e for e in events if e["event"] == "step"]

    def expected(n: int) -> Counter[tuple[str, str]]:
        """The counts of the first n samples."""
        pairs = zip(problems[:n], answers[:n], strict=True)
        return Counter((problem_key(p), a) for p, a in pairs if a is not None)

    async def found() -> Counter[tuple[str, str]]:
        counts: Counter[tuple[str, str]] = Counter()
        for problem in {problem_key(p) for p in problems}:
            for answer, n in (await counts_in_redis(redis_client, stream_name, problem)).items():
                counts[problem, answer] = n
        return counts

    async def put(first: int, n: int) -> None:
        for i in range(first, first + n):
            await producer.put(
                make_sample(
                    problem=problems[i],
                    extracted_answer=answers[i],
                    completion_token_ids=[10 + i, 7, 8],
                )
            )

    # Run 1: steps 1 and 2 (checkpoint v1), step 3 trained and not committed: then killed
    await put(0, 12)
    worker = Worker(cfg, common)
    await worker.setup()
    loop = asyncio.create_task(worker.main_loop())
    await until(lambda: len(steps()) == 3, "step 3")
    loop.cancel()  # as a SIGKILL would: no stop(), no commit of step 3
    await asyncio.gather(loop, return_exceptions=True)
    await worker.intake.queue.aclose()
    assert worker.counts is not None
    await worker.counts.aclose()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")] == ["step_00000002"]
    assert await found() == expected(8)  # steps 1-2; step 3 was trained, never committed

    # v1's counts taken back out of Redis: as if run 1 had died between writing checkpoint v1
    # and adding its counts (the checkpoint holds them, so run 2 must add them)
    (state,) = [ckpt.read_state(p) for p in ckpt.list_checkpoints(tmp_path / "checkpoints")]
    assert [b.version for b in state.answer_counts] == [1]
    keys = await redis_client.keys(f"{stream_name}:answers*")
    assert len(keys) == 3  # the index, the version, problem p's hash (q had no answer)
    await redis_client.delete(*keys)

    # Run 2: resumes at step 2, redoes step 3, takes step 4 and commits them (v2)
    await put(12, 4)
    worker = Worker(cfg, common)
    await worker.setup()
    loop = asyncio.create_task(worker.main_loop())
    await until(lambda: worker.state.step == 4, "checkpoint v2")
    worker.stopping.set()
    await asyncio.wait_for(loop, timeout=60)
    await worker.stop()

    assert await found() == expected(16)
    assert int(await redis_client.get(f"{stream_name}:answers:version")) == 2
    assert await redis_client.xlen(stream_name) == 0

    taken = steps()
    assert [s["step"] for s in taken] == [1, 2, 3, 3, 4]
    # the redone step read the counts as the killed one did: the same bonuses, the same loss
    first, again = (s for s in taken if s["step"] == 3)
    assert again["bonus"] == first["bonus"] and again["loss"] == first["loss"]
    # p's answers, seen more each step: N(p, 1) = 2, 4, 6 and N(p, 2) = 1, 2, 3 (q's none)
    bonuses = [(2 * math.sqrt(1 / (2 * n)) + math.sqrt(1 / n)) / 4 for n in (1, 2, 3)]
    assert [s["bonus"] for s in taken[:3]] == pytest.approx(bonuses)
