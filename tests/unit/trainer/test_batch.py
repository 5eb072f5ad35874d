"""Collating samples: exact token ids, the loss mask on completion tokens only, truncation,
micro-batches, and the samples that cannot be trained on."""

from __future__ import annotations

import pytest
import torch

from services.schemas import Feedback
from tests.utils.samples import make_sample
from trainer.batch import collate, shard_batch, unusable_reason

PAD = 0


def test_tokens_targets_and_mask() -> None:
    short = make_sample(prompt_token_ids=[11, 12], completion_token_ids=[21])
    long = make_sample(
        prompt_token_ids=[11, 12, 13],
        completion_token_ids=[21, 22, 23],
        feedback=Feedback(solution_score=0.5, reasoning_score=0.25, is_correct=False),
    )
    batch = collate([short, long], max_seq_len=64, pad_id=PAD, version=0)
    assert batch.input_ids.tolist() == [[11, 12, 21, 0, 0, 0], [11, 12, 13, 21, 22, 23]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]]
    # position t predicts token t+1; the last position predicts nothing
    assert batch.target_ids.tolist() == [[12, 21, 0, 0, 0, 0], [12, 13, 21, 22, 23, 0]]
    # only the targets that are completion tokens count
    assert batch.loss_mask.tolist() == [[0, 1, 0, 0, 0, 0], [0, 0, 1, 1, 1, 0]]
    assert batch.completion_tokens == 4
    assert batch.solution_score.tolist() == [1.0, 0.5]
    assert batch.reasoning_score.tolist() == pytest.approx([0.8, 0.25])
    assert batch.is_correct.tolist() == [1.0, 0.0]


def test_long_completions_are_cut_at_the_end() -> None:
    sample = make_sample(prompt_token_ids=[1, 2, 3], completion_token_ids=[4, 5, 6, 7, 8])
    batch = collate([sample], max_seq_len=5, pad_id=PAD, version=0)
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5]]
    assert batch.loss_mask.tolist() == [[0, 0, 1, 1, 0]]  # targets 4 and 5


def test_split_trims_each_micro_batch_to_its_longest_sample() -> None:
    samples = [
        make_sample(prompt_token_ids=[1, 2], completion_token_ids=[3] * n) for n in (1, 1, 6)
    ]
    batch = collate(samples, max_seq_len=64, pad_id=PAD, version=0)
    first, second = batch.split(2)
    assert first.input_ids.shape == (2, 3) and second.input_ids.shape == (1, 8)
    assert first.loss_mask.shape == first.target_ids.shape == (2, 3)
    assert first.loss_mask.sum() + second.loss_mask.sum() == batch.loss_mask.sum()
    assert torch.equal(second.solution_score, batch.solution_score[2:])


@pytest.mark.parametrize(
    ("prompt", "completion", "reason"),
    [
        ([1, 2], [3], None),
        # a token id the model has no embedding for (vocabulary of 10 below)
        ([1, 2], [10], "outside the model's vocabulary"),
        ([12, 2], [3], "outside the model's vocabulary"),
        # the prompt alone fills max_seq_len (4): no completion token would be left
        ([1, 2, 3, 4], [5], "leaves no room"),
    ],
)
def test_unusable_reason(prompt: list[int], completion: list[int], reason: str | None) -> None:
    sample = make_sample(prompt_token_ids=prompt, completion_token_ids=completion)
    found = unusable_reason(sample, max_seq_len=4, vocab_size=10)
    assert (found is None) if reason is None else (reason in (found or ""))


@pytest.mark.parametrize(
    ("samples", "world", "micro", "expected"),
    [
        # rank: (samples per micro-batch, their weights); weights sum to world over the ranks
        (5, 2, 2, {0: ([2, 1], [0.8, 0.4]), 1: ([2, 2], [0.8, 0.0])}),  # rank 1 pads to 2
        (1, 2, 4, {0: ([1], [2.0]), 1: ([1], [0.0])}),  # a rank with no sample runs a filler
        (4, 1, 3, {0: ([3, 1], [0.75, 0.25])}),  # alone: the shares of the batch
    ],
)
def test_shards_split_a_batch_into_equal_counts_of_weighted_micro_batches(
    samples: int, world: int, micro: int, expected: dict[int, tuple[list[int], list[float]]]
) -> None:
    batch = [make_sample(completion_token_ids=[20 + i]) for i in range(samples)]
    taken = []
    for rank, (sizes, weights) in expected.items():
        shard = shard_batch(batch, rank, world, micro, max_seq_len=64, pad_id=PAD, version=0)
        assert [m.input_ids.shape[0] for m in shard.micro_batches] == sizes
        assert shard.weights == pytest.approx(weights)
        assert shard.batch_samples == samples
        real = [m for m, w in zip(shard.micro_batches, shard.weights, strict=True) if w]
        taken += [int(row[4]) for m in real for row in m.input_ids]
    # every sample is trained on by exactly one rank
    assert sorted(taken) == [20 + i for i in range(samples)]
