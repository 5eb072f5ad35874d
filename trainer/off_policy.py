"""How far the policy being trained has moved from the one that sampled each token, and the
optional correction for it.

gvloop trains asynchronously: a sample drawn by weight version v is trained when the trainer is
at v + k (k, "versions behind", is 0 when nothing moved in between). Per completion token, with
p_theta the trainer's probability of the sampled token and p_s the engine's (both the model's
own distribution, before temperature and top-p: vLLM's raw log-probabilities):

    r_t       = log p_theta(y_t) - log p_s(y_t)                     the log-ratio
    k3_t      = exp(r_t) - 1 - r_t                                  >= 0
    mismatch  = mean_t k3_t   estimates KL(p_s || p_theta) without bias (y_t ~ p_s)
    outside   = share of tokens with exp(r_t) outside [1/c, c]

Even at k = 0 the two disagree a little: the engine's kernels are not the trainer's. The
correction (off by default, so that the loss is the seed's exactly) weights the likelihood
terms, both of which are means of log p(y_t), by truncated importance weights that do not carry
gradient:

    token:     w_t = min(c, exp(r_t))
    sequence:  w_t = min(c, exp(sum_t r_t))      one weight for all of a sample's tokens

and can leave out (mask) a whole sample whose geometric-mean ratio exp(mean_t r_t) is outside
[1/b, b], or whose mismatch is over a bound. A token whose sampler log-probability is unknown
(a schema-1 sample) has w_t = 1 and is not measured; a sample with none is never masked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Weighting = Literal["none", "token", "sequence"]


@dataclass(frozen=True)
class Correction:
    """What the loss does about off-policy samples; the default does nothing."""

    weighting: Weighting = "none"
    cap: float = 2.0  # c: the importance weights' cap, and the "outside" bounds [1/c, c]
    mask_ratio: float | None = None  # b: mask samples whose ratio is outside [1/b, b]
    max_mismatch: float | None = None  # mask samples whose mismatch is over this


NO_CORRECTION = Correction()


@dataclass(frozen=True)
class TokenRatios:
    """The log-ratios of one micro-batch's learnt tokens, from detached log-probabilities."""

    log_ratio: Tensor  # (B, T) r_t where known, 0 elsewhere
    known: Tensor  # (B, T) bool: completion tokens whose sampler log-prob is known

    @classmethod
    def of(cls, log_p: Tensor, sampler_log_p: Tensor, loss_mask: Tensor) -> TokenRatios:
        known = loss_mask.bool() & torch.isfinite(sampler_log_p)
        log_ratio = torch.where(known, log_p.detach() - sampler_log_p.to(log_p.dtype), 0.0)
        return cls(log_ratio, known)

    @property
    def k3(self) -> Tensor:
        """(B, T) exp(r) - 1 - r, 0 where unknown."""
        return torch.expm1(self.log_ratio) - self.log_ratio

    def sample_mismatch(self) -> Tensor:
        """(B,) mean k3 over each sample's known tokens (0 for a sample with none)."""
        return self.k3.sum(dim=1) / self.known.sum(dim=1).clamp(min=1)

    def outside(self, cap: float) -> Tensor:
        """(B, T) bool: known tokens whose ratio is outside [1/cap, cap]."""
        return self.known & (self.log_ratio.abs() > math.log(cap))

    def weights(self, correction: Correction) -> Tensor:
        """(B, T) truncated importance weights (1 where unknown, or with no weighting)."""
        if correction.weighting == "token":
            return torch.where(self.known, self.log_ratio.exp().clamp(max=correction.cap), 1.0)
        if correction.weighting == "sequence":
            sequence = self.log_ratio.sum(dim=1, keepdim=True).exp().clamp(max=correction.cap)
            return torch.where(self.known.any(dim=1, keepdim=True), sequence, 1.0).expand_as(
                self.log_ratio
            )
        return torch.ones_like(self.log_ratio)

    def kept(self, correction: Correction) -> Tensor:
        """(B,) 1 for the samples the loss keeps, 0 for those the correction masks."""
        keep = torch.ones(self.log_ratio.shape[0], dtype=torch.bool, device=self.known.device)
        if correction.mask_ratio is not None:
            n = self.known.sum(dim=1)
            mean_r = self.log_ratio.sum(dim=1) / n.clamp(min=1)
            keep &= (n == 0) | (mean_r.abs() <= math.log(correction.mask_ratio))
        if correction.max_mismatch is not None:
            keep &= self.sample_mismatch() <= correction.max_mismatch
        return keep.to(self.log_ratio.dtype)


class MismatchTally:
    """Sums over a step's micro-batches (and then its ranks) of what is measured, by how many
    versions behind the samples were: k = 0 .. buckets - 2, and ">= buckets - 1" last."""

    def __init__(self, buckets: int, device: torch.device) -> None:
        # per bucket: k3 sum, tokens measured, tokens outside, samples masked
        self.sums = torch.zeros(buckets, 4, dtype=torch.float64, device=device)

    def add(self, ratios: TokenRatios, behind: Tensor, kept: Tensor, cap: float) -> None:
        bucket = behind.clamp(max=self.sums.shape[0] - 1)  # (B,)
        per_sample = [
            ratios.k3.sum(dim=1), ratios.known.sum(dim=1), ratios.outside(cap).sum(dim=1),
            kept == 0,
        ]  # fmt: skip
        self.sums.index_add_(0, bucket, torch.stack(per_sample, 1).to(self.sums.dtype))

    def result(self) -> Mismatch:
        sums = self.sums.tolist()  # note: a device sync point
        k3, tokens, outside, masked = (sum(column) for column in zip(*sums, strict=True))
        return Mismatch(
            kl=k3 / tokens if tokens else None,
            outside=outside / tokens if tokens else None,
            tokens=int(tokens),
            masked=int(masked),
            kl_by_behind={
                f"{k}+" if k == len(sums) - 1 else str(k): k3 / tokens
                for k, (k3, tokens, _, _) in enumerate(sums)
                if tokens
            },
        )


@dataclass(frozen=True)
class Mismatch:
    """A step's measure of the trained policy against its samples' samplers (None: no token
    of the batch had a known sampler log-probability)."""

    kl: float | None  # mean k3 over the measured tokens
    outside: float | None  # share of them with a ratio outside [1/c, c]
    tokens: int  # tokens measured
    masked: int  # samples the correction left out of the loss
    kl_by_behind: dict[str, float]  # "k" (the last bucket "k+": k or more) -> mean k3
