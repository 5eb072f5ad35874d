"""The learning benchmark's baseline takes the pipeline's step: one optimizer step of the naive
loop (`bench/naive_loop.py`) and one of the trainer worker, which reads the same samples from
Redis, give the same weights from the same start. A change to the trainer's collation, loss or
optimizer reaches the baseline too, or this test says the two have parted."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from services.queue import SampleQueue
from services.schemas import Feedback
from services.settings import CommonSettings
from tests.utils.bench import naive_loop
from tests.utils.samples import make_sample
from trainer import ckpt
from trainer.settings import TrainerSettings
from trainer.train import Worker

LR = 1e-3


def samples() -> list:
    """Of different lengths (more than one micro-batch each way) and every kind of feedback."""
    scores = [(1.0, 1.0, True), (0.0, 0.0, False), (1.0, 0.5, True), (0.0, 0.25, False)] * 2
    return [
        make_sample(
            problem_id=f"p{i}",
            prompt_token_ids=list(range(10 + i, 20 + 2 * i)),
            completion_token_ids=list(range(300 + i, 304 + 3 * i)),
            feedback=Feedback(solution_score=s, reasoning_score=r, is_correct=c),
        )
        for i, (s, r, c) in enumerate(scores)
    ]


async def test_a_naive_loop_step_is_the_trainers_step(
    redis_client, stream_name, common: CommonSettings, tiny_model_dir: Path
) -> None:
    batch = samples()
    naive = naive_loop()
    config = naive.NaiveConfig(model=str(tiny_model_dir), lr=LR, micro_batch_size=3)
    cfg = naive.trainer_settings(config).model_copy(
        update={
            "batch_size": len(batch),
            "max_steps": 1,
            "checkpoint_every": 1,
            "swap": False,
            "metrics_port": 0,
            "progress": "off",
        }
    )
    assert isinstance(cfg, TrainerSettings)
    queue = SampleQueue(redis_client, stream_name, common.group)
    for sample in batch:
        await queue.put(sample)
    worker = Worker(cfg, common)
    await worker.setup()
    await worker.main_loop()
    await worker.stop()
    (checkpoint,) = ckpt.list_checkpoints(common.checkpoint_root)
    trained = load_file(checkpoint / "model.safetensors")

    replica = naive.load_replica(config)
    before = {k: v.clone() for k, v in replica.model.state_dict().items()}
    naive.train_step(replica, batch, LR)
    after = replica.model.state_dict()

    assert trained.keys() <= after.keys()
    for name, tensor in trained.items():
        torch.testing.assert_close(after[name], tensor, rtol=0, atol=1e-6, msg=name)
    moved = [n for n in trained if not torch.equal(before[n], trained[n])]
    assert len(moved) == len(trained)  # every weight took the step
