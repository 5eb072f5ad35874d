"""One optimizer step on a batch, and the learning-rate schedule: the torch side of the trainer,
synchronous (the worker runs it in a thread so that swaps and queue I/O go on meanwhile)."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from trainer.batch import Shard
from trainer.distributed import all_ranks_sum, full_norm, gradient_sync
from trainer.loss import feedback_augmented_loss
from trainer.off_policy import Mismatch, MismatchTally
from trainer.settings import TrainerSettings


@dataclass(frozen=True)
class StepResult:
    loss: float
    ce: float  # batch means of the three parts
    reward: float
    penalty: float
    grad_norm: float  # before clipping
    feedback: float  # mean S
    accuracy: float  # mean C
    tokens: int  # completion tokens
    mismatch: Mismatch  # the trained policy against the samples' samplers, before the update
    explore: float | None = None  # with an exploration bonus: the batch mean of its term
    bonus: float | None = None  # and the batch mean of B_i


def get_lr(step: int, cfg: TrainerSettings) -> float:
    """Learning rate of optimizer step `step` (1-based)."""
    # 1) linear warm-up
    if step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    # 2) then constant
    if cfg.schedule == "constant":
        return cfg.lr
    # 3) or a decay to min_lr, which then stays
    progress = min(1.0, (step - cfg.warmup_steps) / cfg.schedule_decay_steps)
    assert 0 <= progress <= 1
    coeff = 1 - progress if cfg.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.min_lr + coeff * (cfg.lr - cfg.min_lr)


def setup_device(cfg: TrainerSettings) -> tuple[torch.device, torch.dtype | None]:
    """The device, and the autocast dtype (None: plain float32); sets the CPU threads."""
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("GVLOOP_TRAINER_DEVICE=cuda but torch sees no CUDA device")
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    if cfg.dtype == "bfloat16" or (
        cfg.dtype == "auto" and use_cuda and torch.cuda.is_bf16_supported()
    ):
        return device, torch.bfloat16
    return device, None


def learnt_positions(loss_mask: torch.Tensor) -> torch.Tensor:
    """The positions some sample of the micro-batch learns from (its completion tokens'): the
    only ones whose logits the loss reads. The LM head and the softmax over the vocabulary are
    a fifth of a small model's step, and prompts are often most of each sequence."""
    keep = loss_mask.any(dim=0).nonzero().squeeze(1)
    # a micro-batch without a completion token still runs the head once, so that every
    # parameter takes part in the backward (DDP expects it)
    return keep if keep.numel() else torch.tensor([loss_mask.shape[1] - 1], device=keep.device)


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    shard: Shard,
    lr: float,
    cfg: TrainerSettings,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    should_stop: Callable[[], bool] = lambda: False,
) -> StepResult | None:
    """Forward and backward over this rank's micro-batches (gradients accumulate, then the ranks'
    are averaged), clip, AdamW step. None, with the weights untouched, when `should_stop` says so
    between micro-batches: a CPU step can take minutes, and its samples stay pending anyway."""
    model.train()
    for group in optimizer.param_groups:
        group["lr"] = lr
    # ce, reward, penalty, explore, S, C, bonus, tokens over real samples
    sums = torch.zeros(8, device=device)
    exploring = cfg.exploration != "none"
    tally = MismatchTally(cfg.max_staleness + 2, device)
    last = len(shard.micro_batches) - 1
    for i, (micro, weight) in enumerate(zip(shard.micro_batches, shard.weights, strict=True)):
        if should_stop():
            optimizer.zero_grad(set_to_none=True)
            return None
        micro = micro.to(device)
        amp = torch.autocast(device.type, amp_dtype) if amp_dtype else nullcontext()
        keep = learnt_positions(micro.loss_mask)
        # the ranks' gradients are averaged once, in the last micro-batch's backward
        with gradient_sync(model, i == last):
            with amp:
                output = model(
                    input_ids=micro.input_ids,
                    attention_mask=micro.attention_mask,
                    logits_to_keep=keep,
                )
            out = feedback_augmented_loss(
                output.logits,  # (b, len(keep), V)
                micro.target_ids[:, keep],
                micro.loss_mask[:, keep],
                micro.solution_score,
                micro.reasoning_score,
                micro.is_correct,
                cfg.lambda1,
                cfg.lambda2,
                chunk_tokens=cfg.loss_chunk_tokens,
                sampler_log_p=micro.sampler_log_p[:, keep],
                correction=cfg.correction,
                bonus=micro.bonus if exploring else None,
                exploration_coef=cfg.exploration_coef,
            )
            (out.loss * weight).backward()
        if weight:  # not a rank's filler
            s = (micro.solution_score + micro.reasoning_score) / 2
            explore = out.explore if out.explore is not None else torch.zeros_like(out.ce)
            parts = (out.ce, out.reward, out.penalty, explore, s, micro.is_correct, micro.bonus)
            sums += torch.stack([*(p.sum() for p in parts), micro.loss_mask.sum()]).detach()
            assert out.ratios is not None and out.kept is not None
            tally.add(out.ratios, micro.versions_behind, out.kept, cfg.is_cap)
    sums = all_ranks_sum(sums)
    all_ranks_sum(tally.sums)
    grad_norm = full_norm(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm))
    # a non-finite gradient would poison every weight: drop this update (the log shows nan)
    if torch.isfinite(grad_norm):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    tokens = int(sums[7])  # note: a device sync point
    ce, reward, penalty, explore, feedback, accuracy, bonus = (
        sums[:7] / shard.batch_samples
    ).tolist()
    return StepResult(
        loss=ce + reward + penalty + explore if exploring else ce + reward + penalty,
        ce=ce,
        reward=reward,
        penalty=penalty,
        grad_norm=float(grad_norm),
        feedback=feedback,
        accuracy=accuracy,
        tokens=tokens,
        mismatch=tally.result(),
        explore=explore if exploring else None,
        bonus=bonus if exploring else None,
    )
