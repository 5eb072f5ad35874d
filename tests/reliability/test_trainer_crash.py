"""The trainer killed with SIGKILL mid-run, twice, and restarted, with poison entries and an
untrainable sample in its stream: every appended sample is committed by exactly one checkpoint
(trained on, or skipped with a reason), poison goes to the dead-letter stream, nothing is lost.

What a checkpoint commits is read from the checkpoints themselves (`trainer_state.json`): the
ids new in each one are what its steps trained on (or skipped)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.queue import PAYLOAD, SampleQueue
from services.redis_server import connect
from services.settings import CommonSettings
from tests.utils.figures import Figures
from tests.utils.pipeline import LocalStack, eventually, local_stack, newly_committed
from tests.utils.samples import make_sample
from trainer import ckpt

pytestmark = pytest.mark.slow

SAMPLES = 32
BATCH = 4
KILL_AT_STEPS = (3, 5)  # odd, with a checkpoint every 2 steps: uncommitted work is lost
ENV = {
    "GVLOOP_TRAINER_BATCH_SIZE": str(BATCH),
    "GVLOOP_TRAINER_MICRO_BATCH_SIZE": str(BATCH),
    "GVLOOP_TRAINER_MAX_WAIT_S": "0.5",
    "GVLOOP_TRAINER_CHECKPOINT_EVERY": "2",
    "GVLOOP_TRAINER_KEEP_CHECKPOINTS": "1000",  # keep every commit record to check
    "GVLOOP_TRAINER_SWAP": "false",
    "GVLOOP_TRAINER_PROGRESS": "off",
}
POISON = [{"other": "no payload"}, {PAYLOAD: "{not json"}, {PAYLOAD: b"\xff\xfe"}]


@pytest.fixture(scope="module")
def stack(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with local_stack(tiny_model_dir, tmp_path_factory.mktemp("trainer-crash"), ENV, ()) as s:
        yield s


def last_step(stack: LocalStack) -> int:
    return max((e["step"] for e in stack.events("step")), default=0)


async def test_trainer_sigkill_loses_and_repeats_nothing(
    stack: LocalStack, figures: Figures
) -> None:
    common = CommonSettings(_env_file=None, data_dir=stack.data_dir)  # type: ignore[call-arg]
    client = connect(stack.redis.url)
    queue = SampleQueue(client, common.stream, common.group)
    await queue.ensure_group()
    appended = []
    for i in range(SAMPLES):
        appended.append(await queue.put(make_sample(problem_id=f"p{i}")))
        if i % 11 == 0:
            await client.xadd(common.stream, POISON[i // 11])
        if i == SAMPLES // 2:  # valid, but not for this model: skipped with a reason
            unusable = await queue.put(make_sample(completion_token_ids=[10**9]))
            appended.append(unusable)

    kills, lost_steps = 0, 0
    for kill_at in KILL_AT_STEPS:
        stack.start("trainer")
        await eventually(
            lambda k=kill_at: last_step(stack) >= k, "trainer steps", stack, poll_s=0.02
        )
        stack.kill("trainer")
        kills += 1
        committed_steps = [
            ckpt.read_state(p).step for p in ckpt.list_checkpoints(common.checkpoint_root)
        ]
        lost_steps += last_step(stack) - max(committed_steps, default=0)

    committed_before = {i for ids in newly_committed(common.checkpoint_root) for i in ids}
    steps_before = len(stack.events("step"))
    # no checkpoint of its own: what this run trains, only its stop can commit
    stack.start("trainer", env={"GVLOOP_TRAINER_CHECKPOINT_EVERY": "1000"})

    def all_trained() -> bool:
        # committed by an earlier run, trained by this one (not yet committed), or skipped
        trained = sum(e["samples"] for e in stack.events("step")[steps_before:])
        return len(committed_before) + trained + len(stack.events("skip")) >= len(appended)

    await eventually(all_trained, "every sample trained or skipped", stack)
    stack.stop("trainer")  # SIGTERM: commits what it trained since its last checkpoint
    stats = await queue.stats()
    await client.aclose()

    per_checkpoint = newly_committed(common.checkpoint_root)
    counts = Counter(i for ids in per_checkpoint for i in ids)
    # a skipped sample is acknowledged at once, with a skip record instead of a checkpoint
    skipped = [e["id"] for e in stack.events("skip")]
    figures.report(
        kills=kills,
        appended=len(appended),
        committed=len(counts),
        skipped=len(skipped),
        never_committed=len(set(appended) - counts.keys() - set(skipped)),
        committed_twice=sum(n > 1 for n in counts.values()),
        left_in_stream=stats.length,
        left_pending=stats.pending,
        steps_redone_after_kill=lost_steps,
        checkpoints=len(per_checkpoint),
        poison=len(POISON),
        dead_lettered=stats.dead_letters,
    )
    assert skipped == [unusable]
    # every appended sample committed by exactly one checkpoint, or skipped; nothing else
    assert counts.keys() | set(skipped) == set(appended)
    assert not counts.keys() & set(skipped)
    assert max(counts.values()) == 1, "a sample was committed by two checkpoints"
    # the stop committed and acknowledged the rest: nothing left to redo
    assert (stats.length, stats.pending) == (0, 0)
    assert stats.dead_letters == len(POISON)
