"""The feedback-augmented loss against values worked out by hand on small tensors, and its
gradient against finite differences and against a naive full-softmax implementation."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.loss import feedback_augmented_loss, masked_cross_entropy, token_log_probs

# One sample, two completion tokens, vocabulary of 2, so every number is easy by hand:
#   token 1: logits (ln 3, 0) -> p = (3/4, 1/4), target 0: log p = ln 3/4, max p = 3/4
#   token 2: logits (0, 0)    -> p = (1/2, 1/2), target 1: log p = ln 1/2, max p = 1/2
LOGITS = torch.tensor([[[math.log(3.0), 0.0], [0.0, 0.0]]])  # (1, 2, 2)
TARGETS = torch.tensor([[0, 1]])
MASK = torch.ones(1, 2)
MEAN_LOG_P = (math.log(0.75) + math.log(0.5)) / 2  # -0.4904
MEAN_MAX_P = (0.75 + 0.5) / 2  # 0.625


def loss_of(sol: float, reas: float, correct: bool, lambda1: float, lambda2: float, **kw):
    return feedback_augmented_loss(
        kw.get("logits", LOGITS),
        kw.get("targets", TARGETS),
        kw.get("mask", MASK),
        torch.tensor([sol]),
        torch.tensor([reas]),
        torch.tensor([correct]),
        lambda1,
        lambda2,
    )


@pytest.mark.parametrize(
    ("sol", "reas", "correct", "lambda1", "lambda2", "ce", "reward", "penalty"),
    [
        # lambda1 = lambda2 = 0: plain cross-entropy, whatever the feedback
        (0.2, 0.4, False, 0.0, 0.0, -MEAN_LOG_P, 0.0, 0.0),
        # C = 1 removes the penalty; S = 0.5 gives reward -2 * 0.5 * mean log p
        (0.6, 0.4, True, 2.0, 1.0, -MEAN_LOG_P, -1.0 * MEAN_LOG_P, 0.0),
        # S = 0 and C = 0: no reward, the full penalty lambda2 * mean max p
        (0.0, 0.0, False, 2.0, 1.0, -MEAN_LOG_P, 0.0, MEAN_MAX_P),
        # S = 1 and C = 0: (1 - S) removes the penalty, the reward is whole
        (1.0, 1.0, False, 2.0, 3.0, -MEAN_LOG_P, -2.0 * MEAN_LOG_P, 0.0),
        # in between: S = 0.25, C = 0, lambda2 = 2: penalty 2 * 0.75 * 0.625
        (0.5, 0.0, False, 1.0, 2.0, -MEAN_LOG_P, -0.25 * MEAN_LOG_P, 2 * 0.75 * MEAN_MAX_P),
    ],
)
def test_hand_computed_values(sol, reas, correct, lambda1, lambda2, ce, reward, penalty) -> None:
    out = loss_of(sol, reas, correct, lambda1, lambda2)
    assert out.ce.item() == pytest.approx(ce, abs=1e-6)
    assert out.reward.item() == pytest.approx(reward, abs=1e-6)
    assert out.penalty.item() == pytest.approx(penalty, abs=1e-6)
    assert out.loss.item() == pytest.approx(ce + reward + penalty, abs=1e-6)
    assert out.loss.dim() == 0 and out.ce.shape == (1,)


def test_masked_positions_do_not_count() -> None:
    # a third position (a prompt or pad token) with arbitrary logits, masked out
    logits = torch.cat([LOGITS, torch.tensor([[[5.0, -3.0]]])], dim=1)
    out = loss_of(
        0.0, 0.0, False, 2.0, 1.0,
        logits=logits, targets=torch.tensor([[0, 1, 1]]), mask=torch.tensor([[1.0, 1.0, 0.0]]),
    )  # fmt: skip
    assert out.ce.item() == pytest.approx(-MEAN_LOG_P, abs=1e-6)
    assert out.penalty.item() == pytest.approx(MEAN_MAX_P, abs=1e-6)


def test_batch_loss_is_the_mean_over_samples_not_tokens() -> None:
    # sample 0: the two tokens above; sample 1: only its first token counts (log p = ln 3/4)
    logits = LOGITS.repeat(2, 1, 1)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    out = feedback_augmented_loss(
        logits, TARGETS.repeat(2, 1), mask, torch.zeros(2), torch.zeros(2),
        torch.tensor([True, False]), 2.0, 1.0,
    )  # fmt: skip
    # sample 0 is correct: ce only; sample 1 (S = 0, C = 0): ce -ln 3/4 plus penalty 3/4
    per_sample = [-MEAN_LOG_P, -math.log(0.75) + 0.75]
    assert out.ce.tolist() == pytest.approx([-MEAN_LOG_P, -math.log(0.75)], abs=1e-6)
    assert out.loss.item() == pytest.approx(sum(per_sample) / 2, abs=1e-6)


def test_a_sample_without_completion_tokens_adds_zero() -> None:
    out = loss_of(0.0, 0.0, False, 2.0, 1.0, mask=torch.zeros(1, 2))
    assert (out.ce.item(), out.reward.item(), out.penalty.item()) == (0.0, 0.0, 0.0)


def test_zero_lambdas_equal_masked_cross_entropy() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11)
    targets = torch.randint(0, 11, (3, 5))
    mask = (torch.rand(3, 5) > 0.3).float()
    out = feedback_augmented_loss(
        logits, targets, mask, torch.rand(3), torch.rand(3), torch.rand(3) > 0.5, 0.0, 0.0
    )
    assert out.loss.item() == pytest.approx(masked_cross_entropy(logits, targets, mask).item())


def naive_loss(logits, targets, mask, sol, reas, correct, lambda1, lambda2):
    """The spec written the obvious way, with a full softmax."""
    probs = torch.softmax(logits, dim=-1)
    log_p = torch.log(probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1))
    max_p = probs.max(dim=-1).values
    n = mask.sum(1)
    s = (sol + reas) / 2
    per_sample = (
        -(log_p * mask).sum(1) / n
        - lambda1 * s * (log_p * mask).sum(1) / n
        + lambda2 * (1 - s) * (max_p * mask).sum(1) / n * (1 - correct.to(logits))
    )
    return per_sample.mean()


def random_case(dtype: torch.dtype = torch.float64):
    torch.manual_seed(1)
    logits = torch.randn(2, 4, 7, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, 7, (2, 4))
    mask = torch.tensor([[0.0, 1, 1, 1], [0, 0, 1, 0]], dtype=dtype)
    feedback = (torch.tensor([0.3, 0.9]), torch.tensor([0.1, 0.5]), torch.tensor([False, True]))
    return logits, targets, mask, feedback


def test_gradient_matches_finite_differences() -> None:
    logits, targets, mask, (sol, reas, correct) = random_case()

    def f(z: torch.Tensor) -> torch.Tensor:
        out = feedback_augmented_loss(z, targets, mask, sol, reas, correct, 2.0, 1.0)
        return out.loss

    assert torch.autograd.gradcheck(f, (logits,))


def test_value_and_gradient_match_a_naive_full_softmax() -> None:
    logits, targets, mask, (sol, reas, correct) = random_case(torch.float32)
    ours = feedback_augmented_loss(logits, targets, mask, sol, reas, correct, 2.0, 1.0).loss
    (grad_ours,) = torch.autograd.grad(ours, logits)
    naive = naive_loss(logits, targets, mask, sol, reas, correct, 2.0, 1.0)
    (grad_naive,) = torch.autograd.grad(naive, logits)
    assert ours.item() == pytest.approx(naive.item(), rel=1e-5)
    torch.testing.assert_close(grad_ours, grad_naive, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("chunk_tokens", [1, 3, 8, 1024])
def test_chunking_changes_nothing(chunk_tokens: int) -> None:
    logits, targets, _, _ = random_case(torch.float32)
    log_p, max_p = token_log_probs(logits, targets, chunk_tokens)
    full = torch.log_softmax(logits, dim=-1)
    expected = (full.gather(-1, targets.unsqueeze(-1)).squeeze(-1), full.exp().max(dim=-1).values)
    torch.testing.assert_close((log_p, max_p), expected)
    # and the gradient, for any weighting of the two outputs
    weights = torch.randn(2, *log_p.shape)
    ours = torch.autograd.grad((weights[0] * log_p + weights[1] * max_p).sum(), logits)
    naive = torch.autograd.grad((weights[0] * expected[0] + weights[1] * expected[1]).sum(), logits)
    torch.testing.assert_close(ours, naive)


def test_bf16_logits_are_reduced_in_float32() -> None:
    logits, targets, mask, (sol, reas, correct) = random_case(torch.float32)
    low = logits.detach().bfloat16()
    out = feedback_augmented_loss(low, targets, mask, sol, reas, correct, 2.0, 1.0)
    reference = feedback_augmented_loss(low.float(), targets, mask, sol, reas, correct, 2.0, 1.0)
    assert out.loss.dtype == torch.float32
    assert out.loss.item() == pytest.approx(reference.loss.item(), rel=1e-6)
    # the gradient comes back in the logits' dtype
    low.requires_grad_(True)
    feedback_augmented_loss(low, targets, mask, sol, reas, correct, 2.0, 1.0).loss.backward()
    assert low.grad is not None and low.grad.dtype == torch.bfloat16
