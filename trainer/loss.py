"""The feedback-augmented loss: cross-entropy on a sample's completion, weighted up by the
verifier's score, plus a penalty on the model's confidence where the verifier says wrong.

Per sample i, over its completion tokens y_t (prompt and padding masked out, so every mean_t is
over those tokens only), with p(.) = p_theta(. | x, y_<t) at position t:

    S        = (solution_score + reasoning_score) / 2             in [0, 1]
    C        = is_correct                                         0 or 1
    ce       = mean_t -log p(y_t)                                 L_CE
    reward   = -lambda1 * S * mean_t log p(y_t)                   = lambda1 * S * ce
    penalty  = lambda2 * (1 - S) * mean_t max_j p(j) * (1 - C)
    loss     = mean_i (ce + reward + penalty)                     batch: mean over samples

So a sample's likelihood term weighs 1 + lambda1 * S, and only a sample judged wrong (C = 0) is
pushed away from confident tokens, the harder the lower its score. A sample with no completion
token contributes 0 to every term.

With an off-policy correction (`trainer.off_policy`; off by default, and then the loss is the
above exactly) the two log p means become weighted ones, mean_t w_t log p(y_t) with truncated
importance weights w_t that carry no gradient, and a sample the correction masks contributes 0:

    loss     = mean_i m_i * (ce + reward + penalty)                m_i in {0, 1}

With an exploration bonus B_i (`trainer.exploration`; off by default, and then the loss is the
above exactly) a fourth term weighs the sample's likelihood by beta * B_i, floored so that the
sample's whole likelihood weight 1 + lambda1 * S + e_i stays >= 0 (a bonus can cancel a
sample's imitation, never turn it into unbounded unlikelihood):

    e_i      = max(beta * B_i, -(1 + lambda1 * S))
    explore  = -e_i * mean_t log p(y_t)                            = e_i * ce
    loss     = mean_i m_i * (ce + reward + penalty + explore)

Memory: the loss needs three numbers per token from the (B, T, V) logits z: the target logit,
the max logit and the logsumexp, since log p(y_t) = z_y - logsumexp(z) and
max_j p(j) = exp(max_j z_j - logsumexp(z)). `TokenLogProbs` computes them a chunk of tokens at a
time and keeps only them (and the logits, which exist anyway) for backward, where it writes the
gradient chunk by chunk: nothing of size (B, T, V) is kept beyond the gradient itself, where
plain cross-entropy keeps a whole log-softmax as well.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from trainer.off_policy import NO_CORRECTION, Correction, TokenRatios


@dataclass(frozen=True)
class LossOutput:
    loss: Tensor  # () the batch loss, mean over samples of ce + reward + penalty
    ce: Tensor  # (B,) each part as optimised (0 for a masked sample)
    reward: Tensor  # (B,)
    penalty: Tensor  # (B,)
    ratios: TokenRatios | None = None  # with the samplers' log-probs: the trainer's against them
    kept: Tensor | None = None  # (B,) with them: 0 for the samples the correction masked
    explore: Tensor | None = None  # (B,) with an exploration bonus: its term


class TokenLogProbs(torch.autograd.Function):
    """(N, V) logits, (N,) targets -> log p(target) and max_j p(j), each (N,), in at least
    float32 whatever the logits' dtype (a bf16 logsumexp is off by ~0.05 nats at 49k tokens)."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, chunk_tokens: int) -> tuple[Tensor, Tensor]:
        dtype = torch.promote_types(logits.dtype, torch.float32)
        n = logits.shape[0]
        lse = torch.empty(n, dtype=dtype, device=logits.device)
        log_p, max_p = torch.empty_like(lse), torch.empty_like(lse)
        argmax = torch.empty(n, dtype=torch.long, device=logits.device)
        for rows in _chunks(n, chunk_tokens):
            z = logits[rows].to(dtype)  # (n, V)
            lse[rows] = torch.logsumexp(z, dim=-1)
            top, argmax[rows] = z.max(dim=-1)
            log_p[rows] = z.gather(1, targets[rows, None]).squeeze(1) - lse[rows]
            max_p[rows] = torch.exp(top - lse[rows])
        ctx.save_for_backward(logits, targets, lse, argmax, max_p)
        ctx.chunk_tokens = chunk_tokens
        return log_p, max_p

    @staticmethod
    def backward(ctx, grad_log_p: Tensor, grad_max_p: Tensor) -> tuple[Tensor, None, None]:
        logits, targets, lse, argmax, max_p = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for rows in _chunks(logits.shape[0], ctx.chunk_tokens):
            # d log p_y / dz = onehot(y) - p;  d max p / dz = max p * (onehot(argmax) - p)
            g_log_p = grad_log_p[rows, None]  # (n, 1)
            g_max_p = (grad_max_p * max_p)[rows, None]  # (n, 1)
            chunk = torch.exp(logits[rows].to(lse.dtype) - lse[rows, None])  # softmax, (n, V)
            chunk.mul_(-(g_log_p + g_max_p))
            chunk.scatter_add_(1, targets[rows, None], g_log_p)
            chunk.scatter_add_(1, argmax[rows, None], g_max_p)
            grad[rows] = chunk
        return grad, None, None


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def token_log_probs(
    logits: Tensor, target_ids: Tensor, chunk_tokens: int = 1024
) -> tuple[Tensor, Tensor]:
    """log p(target) and max_j p(j) per position, both (B, T)."""
    batch, length, vocab = logits.shape
    log_p, max_p = TokenLogProbs.apply(
        logits.reshape(-1, vocab), target_ids.reshape(-1), chunk_tokens
    )
    return log_p.view(batch, length), max_p.view(batch, length)


def feedback_augmented_loss(
    logits: Tensor,
    target_ids: Tensor,
    loss_mask: Tensor,
    solution_score: Tensor,
    reasoning_score: Tensor,
    is_correct: Tensor,
    lambda1: float,
    lambda2: float,
    chunk_tokens: int = 1024,
    sampler_log_p: Tensor | None = None,
    correction: Correction = NO_CORRECTION,
    bonus: Tensor | None = None,
    exploration_coef: float = 0.0,
) -> LossOutput:
    """The feedback-augmented loss of a batch (formula in the module docstring).

    logits (B, T, V): position t predicts target_ids[:, t] (already shifted).
    target_ids (B, T) int; loss_mask (B, T): 1 on completion tokens, 0 on prompt and padding.
    solution_score, reasoning_score (B,) in [0, 1]; is_correct (B,) bool or 0/1.
    sampler_log_p (B, T): the engine's log p of each target (NaN where unknown), to measure
    the trainer against and to apply `correction` with.
    bonus (B,): each sample's exploration bonus B_i, weighed by `exploration_coef` (beta).
    A sample with no completion token contributes 0 to every part (its means are over nothing).
    """
    assert logits.dim() == 3 and logits.shape[:2] == target_ids.shape == loss_mask.shape
    log_p, max_p = token_log_probs(logits, target_ids, chunk_tokens)  # (B, T) each
    mask = loss_mask.to(log_p.dtype)
    ratios = None if sampler_log_p is None else TokenRatios.of(log_p, sampler_log_p, mask)
    # without a correction: weights of exactly 1 and nothing masked, so the seed's loss exactly
    weights = 1.0 if ratios is None else ratios.weights(correction)  # (B, T)
    kept = None if ratios is None else ratios.kept(correction)  # (B,)
    n_tokens = mask.sum(dim=1).clamp(min=1)  # (B,)
    mean_log_p = (log_p * weights * mask).sum(dim=1) / n_tokens  # (B,)
    mean_max_p = (max_p * mask).sum(dim=1) / n_tokens  # (B,)

    s = (solution_score.to(log_p) + reasoning_score.to(log_p)) / 2  # (B,)
    c = is_correct.to(log_p)  # (B,)
    ce = -mean_log_p
    reward = -lambda1 * s * mean_log_p
    penalty = lambda2 * (1 - s) * mean_max_p * (1 - c)
    if kept is not None:
        ce, reward, penalty = ce * kept, reward * kept, penalty * kept
    if bonus is None:
        return LossOutput((ce + reward + penalty).mean(), ce, reward, penalty, ratios, kept)
    # the bonus' weight on the likelihood, at most cancelling the sample's own 1 + lambda1 * S
    e = torch.maximum(exploration_coef * bonus.to(log_p), -(1 + lambda1 * s))  # (B,)
    explore = -e * mean_log_p if kept is None else -e * mean_log_p * kept
    total = (ce + reward + penalty + explore).mean()
    return LossOutput(total, ce, reward, penalty, ratios, kept, explore)


def masked_cross_entropy(logits: Tensor, target_ids: Tensor, loss_mask: Tensor) -> Tensor:
    """Plain cross-entropy, mean over each sample's masked tokens, then over samples: the
    baseline the loss reduces to with lambda1 = lambda2 = 0 (used by the benchmark)."""
    nll = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1).float(), target_ids.flatten(), reduction="none"
    ).view_as(target_ids)  # (B, T)
    mask = loss_mask.to(nll.dtype)
    return ((nll * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()
