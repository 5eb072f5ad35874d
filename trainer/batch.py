"""Samples to tensors: the exact token ids vLLM used (prompt + completion), right-padded, with a
loss mask on the completion tokens only, the three feedback numbers per sample, what the
sampler said of each token (its log-probability, and how many versions behind it was), and the
sample's exploration bonus."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from services.schemas import Sample


@dataclass(frozen=True)
class Batch:
    input_ids: Tensor  # (B, T) prompt + completion, right-padded
    attention_mask: Tensor  # (B, T) 1 on real tokens
    # position t predicts token t+1; the last column has no target (padding, masked out), so
    # the model's (B, T, V) logits are used whole instead of copied into a (B, T-1, V) slice
    target_ids: Tensor  # (B, T) input_ids shifted left
    loss_mask: Tensor  # (B, T) 1 where the target is a completion token
    solution_score: Tensor  # (B,)
    reasoning_score: Tensor  # (B,)
    is_correct: Tensor  # (B,) 0/1
    sampler_log_p: Tensor  # (B, T) the engine's log p of each completion target, NaN elsewhere
    versions_behind: Tensor  # (B,) int: the trainer's weight version minus the sampler's
    bonus: Tensor  # (B,) exploration bonus B_i (trainer.exploration); 0 without one

    @property
    def completion_tokens(self) -> int:
        return int(self.loss_mask.sum())

    def to(self, device: torch.device) -> Batch:
        return Batch(*(getattr(self, f.name).to(device) for f in fields(self)))

    def split(self, size: int) -> list[Batch]:
        """Micro-batches of at most `size` samples, trimmed to their own longest sequence."""
        parts = []
        for start in range(0, self.input_ids.shape[0], size):
            rows = slice(start, start + size)
            length = int(self.attention_mask[rows].sum(dim=1).max())
            tensors = (getattr(self, f.name) for f in fields(self))
            parts.append(Batch(*(t[rows, :length] if t.dim() == 2 else t[rows] for t in tensors)))
        return parts


def sequence_length(sample: Sample) -> int:
    return len(sample.prompt_token_ids) + len(sample.completion_token_ids)


def unusable_reason(sample: Sample, max_seq_len: int, vocab_size: int) -> str | None:
    """Why a sample cannot be trained on with this model and length limit, or None."""
    tokens = sample.prompt_token_ids + sample.completion_token_ids
    if max(tokens) >= vocab_size:
        return f"token id {max(tokens)} outside the model's vocabulary of {vocab_size}"
    if len(sample.prompt_token_ids) >= max_seq_len:
        return f"prompt of {len(sample.prompt_token_ids)} tokens leaves no room (max_seq_len)"
    return None


def collate(
    samples: list[Sample], max_seq_len: int, pad_id: int, version: int,
    bonuses: list[float] | None = None,
) -> Batch:  # fmt: skip
    """Pad the samples' token ids into one batch; completions longer than the room left after
    the prompt are cut at the end. Every sample must have passed `unusable_reason`. `version`
    is the weight version of the model the batch is trained on; `bonuses` one per sample."""
    sequences = [(s.prompt_token_ids + s.completion_token_ids)[:max_seq_len] for s in samples]
    length = max(len(seq) for seq in sequences)
    input_ids = torch.full((len(samples), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), length), dtype=torch.long)
    loss_mask = torch.zeros((len(samples), length), dtype=torch.float32)
    sampler_log_p = torch.full((len(samples), length), torch.nan, dtype=torch.float32)
    for row, (sample, seq) in enumerate(zip(samples, sequences, strict=True)):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        attention_mask[row, : len(seq)] = 1
        # target t is token t+1: the first completion token is the target of the last prompt one
        completion = slice(len(sample.prompt_token_ids) - 1, len(seq) - 1)
        loss_mask[row, completion] = 1
        if sample.completion_logprobs is not None:
            kept = len(seq) - len(sample.prompt_token_ids)
            sampler_log_p[row, completion] = torch.tensor(sample.completion_logprobs[:kept])
    feedback = [s.feedback for s in samples]
    return Batch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        target_ids=torch.cat([input_ids[:, 1:], input_ids.new_full((len(samples), 1), pad_id)], 1),
        loss_mask=loss_mask,
        solution_score=torch.tensor([f.solution_score for f in feedback]),
        reasoning_score=torch.tensor([f.reasoning_score for f in feedback]),
        is_correct=torch.tensor([float(f.is_correct) for f in feedback]),
        sampler_log_p=sampler_log_p,
        versions_behind=torch.tensor([max(0, version - s.weight_version) for s in samples]),
        bonus=torch.tensor(bonuses if bonuses is not None else [0.0] * len(samples)),
    )


@dataclass(frozen=True)
class Shard:
    """One rank's part of a batch, as micro-batches with the weight of each one's mean loss:
    its share of the batch's samples times the world size, since DDP and FSDP average the ranks'
    gradients, so that the update is the one a single process would make on the whole batch.
    Every rank runs as many micro-batches (FSDP gathers weights in each forward, and DDP syncs
    in the last backward only): a rank short of samples makes up the count with weight-0 ones."""

    micro_batches: list[Batch]
    weights: list[float]
    batch_samples: int


def shard_batch(
    samples: list[Sample], rank: int, world: int, micro_batch_size: int, max_seq_len: int,
    pad_id: int, version: int, bonuses: list[float] | None = None,
) -> Shard:  # fmt: skip
    """Rank `rank`'s shard of `samples` (sorted by length): every world-th sample, so each rank
    gets as many tokens as the others to within one sample. `bonuses`: one per sample."""
    mine = samples[rank::world]
    my_bonuses = bonuses[rank::world] if bonuses is not None else None
    micro_batches = (
        collate(mine, max_seq_len, pad_id, version, my_bonuses).split(micro_batch_size)
        if mine
        else []
    )
    weights = [m.input_ids.shape[0] * world / len(samples) for m in micro_batches]
    # rank 0 holds the most samples, so its count is every rank's
    count = -(-len(samples[0::world]) // micro_batch_size)
    filler = (
        micro_batches[-1] if micro_batches else collate(samples[:1], max_seq_len, pad_id, version)
    )
    padding = count - len(micro_batches)
    return Shard(micro_batches + [filler] * padding, weights + [0.0] * padding, len(samples))
