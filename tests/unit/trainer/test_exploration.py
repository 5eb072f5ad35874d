"""The exploration bonus and its baselines on a fixed set of samples, worked out by hand; how it
enters the loss; and with its coefficient 0, the seed's loss and step bit for bit."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from tests.unit.trainer.test_step import settings, tiny_model
from tests.utils.samples import make_sample
from trainer.batch import shard_batch
from trainer.exploration import (
    answer_key,
    compute_bonuses,
    count_bonus,
    outcomes,
    problem_key,
)
from trainer.loss import feedback_augmented_loss
from trainer.step import train_step

# Five samples of one batch: three of problem x answer 5, 5 and 7, a fourth of x has no answer,
# and one of y answers 3. Before the batch, N(x, 5) = 2, N(x, 7) = 0, N(y, 3) = 3.
X, Y = problem_key("x"), problem_key("y")
KEYS = [(X, "5"), (X, "5"), (X, "7"), None, (Y, "3")]
SEEN = [2, 2, 0, 0, 3]
# N with the batch's own samples counted: (x, 5) 2 + 2 = 4, (x, 7) 0 + 1 = 1, (y, 3) 3 + 1 = 4
RAW = [0.5, 0.5, 1.0, 0.0, 0.5]  # min(1, sqrt(1 / N)); no answer: no bonus


@pytest.mark.parametrize(
    ("mode", "baseline", "b0", "expected"),
    [
        ("count", "none", 0.5, RAW),
        # x's group is the three samples with an answer: 0.5 - (0.5 + 1) / 2, 1 - (0.5 + 0.5) / 2;
        # y's sample is alone: no others to compare with, no bonus
        ("count", "mean", 0.5, [-0.25, -0.25, 0.5, 0.0, 0.0]),
        ("count", "constant", 0.25, [0.25, 0.25, 0.75, 0.0, 0.25]),
        # k = 3 for x: each 5 has one other 5, the 7 none; y alone: k = 1, nothing to repeat
        ("batch", "none", 0.5, [-1 / 3, -1 / 3, 0.0, 0.0, 0.0]),
        # the baseline is count's only
        ("batch", "constant", 0.25, [-1 / 3, -1 / 3, 0.0, 0.0, 0.0]),
        ("none", "mean", 0.5, [0.0] * 5),
    ],
)
def test_bonuses_by_hand(mode, baseline, b0: float, expected: list[float]) -> None:
    seen = SEEN if mode == "count" else None
    assert compute_bonuses(KEYS, mode, baseline, b0, seen) == pytest.approx(expected)


def test_the_mean_baseline_sums_to_zero_over_a_group() -> None:
    keys = [(X, a) for a in ("1", "2", "2", "3", "3", "3")]
    bonuses = compute_bonuses(keys, "count", "mean", seen=[0, 5, 5, 1, 1, 1])
    assert sum(bonuses) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    ("n", "bonus"),
    [
        (1, 1.0),  # a never-seen answer, this sample counted: the full bonus
        (2, math.sqrt(0.5)),
        (4, 0.5),
        (100, 0.1),
    ],
)
def test_count_bonus(n: int, bonus: float) -> None:
    assert count_bonus(n) == pytest.approx(bonus)


def test_outcome_keys() -> None:
    long = "x" * 65  # over the 64 bytes a compact Redis hash field holds
    samples = [
        make_sample(problem="What is 2 + 3?", extracted_answer=" 5 "),
        make_sample(problem="What is 2 + 3?", extracted_answer=None),
        make_sample(problem="What is 2 + 4?", extracted_answer=long),
    ]
    keys = outcomes(samples)
    assert keys[0] == (problem_key("What is 2 + 3?"), "5")
    assert keys[1] is None
    assert keys[2] is not None and keys[2][1].startswith("sha1:") and len(keys[2][1]) <= 64
    assert keys[2][0] != keys[0][0] and len(keys[2][0]) == 16
    assert answer_key("   ") is None and answer_key("-3") == "-3"


# The loss on two samples of two tokens whose log p at the targets are given (vocabulary of 2)
LOG_P = torch.log(torch.tensor([[0.5, 0.25], [0.3, 0.6]]))
SOL, REAS, CORRECT = torch.tensor([0.5, 0.0]), torch.tensor([0.5, 0.0]), torch.tensor([0, 1])


def loss_parts(bonus: torch.Tensor | None, coef: float = 0.0):
    p = LOG_P.exp()
    logits = torch.log(torch.stack([p, 1 - p], dim=-1)).requires_grad_()  # target 0
    out = feedback_augmented_loss(
        logits, torch.zeros(2, 2, dtype=torch.long), torch.ones(2, 2), SOL, REAS, CORRECT,
        2.0, 1.0, bonus=bonus, exploration_coef=coef,
    )  # fmt: skip
    out.loss.backward()
    assert logits.grad is not None
    return out, logits.grad


@pytest.mark.parametrize("bonus", [[0.5, -1.0], [1.0, 1.0], [-0.25, 0.0]])
def test_with_coefficient_0_the_loss_is_the_seeds_exactly(bonus: list[float]) -> None:
    seed, seed_grad = loss_parts(None)
    out, grad = loss_parts(torch.tensor(bonus), coef=0.0)
    assert torch.equal(out.loss, seed.loss) and torch.equal(grad, seed_grad)
    assert torch.equal(out.ce, seed.ce) and torch.equal(out.reward, seed.reward)
    assert out.explore is not None and out.explore.tolist() == [0.0, 0.0]


def test_the_bonus_weighs_the_likelihood_and_never_reverses_it() -> None:
    # S = (0.5, 0): likelihood weights 1 + 2 S = (2, 1); beta B = 2 * (0.5, -1) = (1, -2),
    # the second floored at -1: its imitation cancelled, not reversed
    out, grad = loss_parts(torch.tensor([0.5, -1.0]), coef=2.0)
    seed, _ = loss_parts(None)
    ce = -LOG_P.mean(dim=1)
    assert out.explore is not None
    assert out.explore.tolist() == pytest.approx([1.0 * ce[0].item(), -1.0 * ce[1].item()])
    parts = seed.ce + seed.reward + seed.penalty + out.explore
    assert out.loss.item() == pytest.approx(parts.mean().item())
    # sample 1 is correct (no penalty) and its likelihood weight is 0: no gradient at all
    assert torch.count_nonzero(grad[1]) == 0 and torch.count_nonzero(grad[0]) > 0


def test_a_step_with_coefficient_0_is_the_seeds_step_exactly() -> None:
    samples = [
        make_sample(completion_token_ids=[5, 6, 7][:n], extracted_answer=a)
        for n, a in ((3, "5"), (2, "5"), (1, "6"))
    ]
    bonuses = compute_bonuses(outcomes(samples), "count", "none", seen=[0, 0, 0])
    explored_cfg = settings(
        batch_size=3, micro_batch_size=2, exploration="count", exploration_coef=0.0
    )
    results = []
    for cfg, b in ((settings(batch_size=3, micro_batch_size=2), None), (explored_cfg, bonuses)):
        model = tiny_model()
        optimizer = torch.optim.AdamW(model.parameters())
        shard = shard_batch(samples, 0, 1, 2, 64, 0, 0, b)
        result = train_step(model, optimizer, shard, 1e-3, cfg, torch.device("cpu"), None)
        results.append((result, copy.deepcopy(model.state_dict())))
    (seed, seed_weights), (explored, weights) = results
    assert explored.loss == seed.loss and explored.grad_norm == seed.grad_norm
    assert all(torch.equal(weights[k], seed_weights[k]) for k in seed_weights)
    assert seed.bonus is None and explored.explore == 0.0
    assert explored.bonus == pytest.approx(sum(bonuses) / 3)  # (0.71 + 0.71 + 1) / 3
