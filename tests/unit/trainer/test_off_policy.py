"""The off-policy measure and correction against values worked out by hand, and the loss with
the correction off against the loss without the samplers' log-probabilities (bit for bit)."""

from __future__ import annotations

import math

import pytest
import torch

from tests.utils.samples import make_sample
from trainer.batch import collate
from trainer.loss import feedback_augmented_loss
from trainer.off_policy import Correction, MismatchTally, TokenRatios

LN2, LN3 = math.log(2.0), math.log(3.0)
# sample 0: the trainer doubles token 1's probability and halves token 2's: r = (ln 2, -ln 2)
# sample 1: the trainer triples both: r = (ln 3, ln 3); sample 2: no sampler log-probs known
LOG_P = torch.log(torch.tensor([[0.5, 0.25], [0.3, 0.6], [0.5, 0.5]]))
SAMPLER = torch.log(torch.tensor([[0.25, 0.5], [0.1, 0.2], [float("nan"), float("nan")]]))
MASK = torch.ones(3, 2)
RATIOS = TokenRatios.of(LOG_P, SAMPLER, MASK)
K3_0 = (2 - 1 - LN2 + 0.5 - 1 + LN2) / 2  # mean of r - 1 - log r over sample 0: 0.25
K3_1 = 3 - 1 - LN3  # 0.9014


def test_log_ratios_and_mismatch() -> None:
    expected = torch.tensor([[LN2, -LN2], [LN3, LN3], [0, 0]])
    assert torch.allclose(RATIOS.log_ratio, expected)
    assert RATIOS.known.tolist() == [[True, True], [True, True], [False, False]]
    assert RATIOS.sample_mismatch().tolist() == pytest.approx([K3_0, K3_1, 0.0])
    # cap 2.5: only the tripled tokens are outside [0.4, 2.5]
    assert RATIOS.outside(2.5).tolist() == [[False, False], [True, True], [False, False]]


@pytest.mark.parametrize(
    ("correction", "weights"),
    [
        (Correction("none"), [[1, 1], [1, 1], [1, 1]]),
        # per token, capped at 1.5: 2 -> 1.5, 0.5 stays, 3 -> 1.5; unknown tokens weigh 1
        (Correction("token", cap=1.5), [[1.5, 0.5], [1.5, 1.5], [1, 1]]),
        # per sample, the product of the ratios: 2 * 0.5 = 1; 3 * 3 = 9 -> the cap
        (Correction("sequence", cap=4.0), [[1, 1], [4, 4], [1, 1]]),
    ],
)
def test_truncated_importance_weights(correction: Correction, weights: list[list[float]]) -> None:
    assert torch.allclose(RATIOS.weights(correction), torch.tensor(weights, dtype=torch.float))


@pytest.mark.parametrize(
    ("correction", "kept"),
    [
        (Correction(), [1, 1, 1]),
        # geometric-mean ratios 1 and 3: only the second is outside [1/2, 2]
        (Correction(mask_ratio=2.0), [1, 0, 1]),
        (Correction(mask_ratio=3.5), [1, 1, 1]),
        # mismatch 0.25 and 0.90 against a bound of 0.5; a sample not measured is kept
        (Correction(max_mismatch=0.5), [1, 0, 1]),
        (Correction(max_mismatch=0.2), [0, 0, 1]),
    ],
)
def test_masks(correction: Correction, kept: list[float]) -> None:
    assert RATIOS.kept(correction).tolist() == kept


def loss_parts(correction: Correction | None, log_p: torch.Tensor = LOG_P):
    """The loss on logits whose log-softmax at the targets is `log_p` (vocabulary of 2)."""
    p = log_p.exp()
    logits = torch.log(torch.stack([p, 1 - p], dim=-1)).requires_grad_()  # target 0
    kwargs = {} if correction is None else {"sampler_log_p": SAMPLER, "correction": correction}
    out = feedback_augmented_loss(
        logits, torch.zeros(3, 2, dtype=torch.long), MASK, torch.tensor([0.5, 1.0, 0.0]),
        torch.tensor([0.5, 1.0, 0.0]), torch.tensor([0, 1, 0]), 2.0, 1.0, **kwargs,
    )  # fmt: skip
    out.loss.backward()
    assert logits.grad is not None
    return out, logits.grad


def test_without_a_correction_the_loss_is_the_seeds_exactly() -> None:
    seed, seed_grad = loss_parts(None)
    measured, grad = loss_parts(Correction())
    assert measured.loss.item() == seed.loss.item()
    assert torch.equal(measured.ce, seed.ce) and torch.equal(grad, seed_grad)
    assert measured.kept is not None and measured.kept.tolist() == [1, 1, 1]


def test_token_weights_enter_the_likelihood_terms_only() -> None:
    out, _ = loss_parts(Correction("token", cap=1.5))
    seed, _ = loss_parts(None)
    weighted = -(1.5 * LOG_P[0, 0] + 0.5 * LOG_P[0, 1]) / 2  # sample 0's ce
    assert out.ce[0].item() == pytest.approx(weighted.item())
    assert out.reward[0].item() == pytest.approx(2.0 * 0.5 * weighted.item())
    assert out.penalty[0].item() == pytest.approx(seed.penalty[0].item())  # unweighted
    assert out.ce[2].item() == pytest.approx(seed.ce[2].item())  # nothing known: weight 1


def test_a_masked_sample_adds_nothing_to_the_loss_or_the_gradient() -> None:
    out, grad = loss_parts(Correction(mask_ratio=2.0))
    seed, _ = loss_parts(None)
    assert (out.ce[1].item(), out.reward[1].item(), out.penalty[1].item()) == (0, 0, 0)
    others = [0, 2]
    parts = seed.ce[others] + seed.reward[others] + seed.penalty[others]
    assert out.loss.item() == pytest.approx(parts.sum().item() / 3)
    assert torch.count_nonzero(grad[1]) == 0 and torch.count_nonzero(grad[0]) > 0


def test_the_tally_splits_by_versions_behind() -> None:
    tally = MismatchTally(buckets=3, device=torch.device("cpu"))
    kept = RATIOS.kept(Correction(mask_ratio=2.0))
    tally.add(RATIOS, torch.tensor([0, 7, 1]), kept, cap=2.5)  # 7 behind: the "2+" bucket
    result = tally.result()
    assert result.tokens == 4 and result.masked == 1
    assert result.kl == pytest.approx((2 * K3_0 + 2 * K3_1) / 4)
    assert result.outside == pytest.approx(2 / 4)
    assert result.kl_by_behind == pytest.approx({"0": K3_0, "2+": K3_1})


def test_nothing_known_measures_nothing() -> None:
    tally = MismatchTally(buckets=2, device=torch.device("cpu"))
    ratios = TokenRatios.of(LOG_P[2:], SAMPLER[2:], MASK[2:])
    tally.add(ratios, torch.tensor([0]), torch.ones(1), cap=2.0)
    result = tally.result()
    assert (result.kl, result.outside, result.tokens, result.kl_by_behind) == (None, None, 0, {})


def test_collate_puts_each_logprob_under_its_target() -> None:
    sample = make_sample(
        prompt_token_ids=[1, 2, 3], completion_token_ids=[4, 5, 6],
        completion_logprobs=[-0.1, -0.2, -0.3], weight_version=3,
    )  # fmt: skip
    old = make_sample(prompt_token_ids=[1, 2], completion_token_ids=[4], weight_version=5)
    batch = collate([sample, old], max_seq_len=5, pad_id=0, version=5)  # sample cut to 2 tokens
    nan = float("nan")
    expected = [[nan, nan, -0.1, -0.2, nan], [nan, nan, nan, nan, nan]]
    assert torch.allclose(batch.sampler_log_p, torch.tensor(expected), equal_nan=True)
    assert batch.versions_behind.tolist() == [2, 0]
