"""The generation-verification gap ("Mind the Gap", Song et al., ICLR 2025) of one version's
held-out samples, as pure functions: how much more often are the answers a verifier accepts
right than the answers as sampled? Every curve point with `--gap-threshold` carries it for the
verifier's judge, asked without the reference answer, and for the reference itself, the upper
bound (docs/make-run.md, "What the curve measures").

With n samples, y_i = 1 when sample i is right by the reference (the rules, or your checker),
s_i the verifier's score of it and t the threshold:

    raw accuracy       a   = (1/n) sum_i y_i
    kept               K   = {i : s_i >= t}
    kept accuracy      a_K = (1/|K|) sum_{i in K} y_i          (None when K is empty)
    gap                g   = a_K - a                            (None when K is empty)
    relative gap       g / (1 - a)                              (None when a = 1)
    verifier accuracy  (1/n) sum_i 1{(s_i >= t) = y_i}
    AUC                P(s_right > s_wrong) + P(s_right = s_wrong) / 2 over all pairs of a right
                       and a wrong sample, from midranks          (None unless both kinds exist)

The relative gap is the share of the room above the raw accuracy that the filter closes: 1 for
a verifier that keeps only right answers (the reference), 0 for one that keeps at random,
negative for one that prefers wrong answers. With every sample right there is no room (and the
gap is 0 whatever is kept), so it is None.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel

REFERENCE = "reference"
"""The `verifier` of the upper-bound row: the grading against the reference answer itself."""


class VerifierGap(BaseModel):
    """The gap of one verifier on one version's held-out samples (see the module docstring)."""

    verifier: str
    """Who scored: `reference` (the upper bound), or the judge's model."""
    threshold: float
    """A sample is kept when its score is at least this."""
    samples: int
    raw_accuracy: float
    kept: int
    kept_accuracy: float | None
    gap: float | None
    relative_gap: float | None
    verifier_accuracy: float
    """How often the verifier's verdict (score >= threshold) agrees with the reference's."""
    auc: float | None
    judge_versions: list[int] | None = None
    """The weight versions of the judge that gave the verdicts, as it reported them (a judge
    on agent A's engine follows every hot swap); None: a judge that reports none."""


def auc(right: Sequence[bool], scores: Sequence[float]) -> float | None:
    """P(a right sample scores above a wrong one), ties counting half: the Mann-Whitney U over
    (right count x wrong count), from midranks; None unless some samples are right and some
    wrong."""
    assert len(right) == len(scores), (len(right), len(scores))
    positives = sum(right)
    negatives = len(right) - positives
    if not positives or not negatives:
        return None
    order = sorted(range(len(scores)), key=scores.__getitem__)
    ranks = [0.0] * len(scores)
    start = 0
    while start < len(order):
        end = start  # the tied run order[start..end]
        while end + 1 < len(order) and scores[order[end + 1]] == scores[order[start]]:
            end += 1
        for i in order[start : end + 1]:
            ranks[i] = (start + end) / 2 + 1  # 1-based midrank
        start = end + 1
    rank_sum = sum(rank for rank, r in zip(ranks, right, strict=True) if r)
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def compute_gap(
    right: Sequence[bool],
    scores: Sequence[float],
    threshold: float,
    verifier: str,
    judge_versions: list[int] | None = None,
) -> VerifierGap:
    """The gap of a verifier that scored the samples `scores`, right by the reference `right`."""
    assert right and len(right) == len(scores), (len(right), len(scores))
    raw = sum(right) / len(right)
    kept = [r for r, s in zip(right, scores, strict=True) if s >= threshold]
    kept_accuracy = sum(kept) / len(kept) if kept else None
    gap = None if kept_accuracy is None else kept_accuracy - raw
    agree = sum((s >= threshold) == r for r, s in zip(right, scores, strict=True))
    return VerifierGap(
        verifier=verifier,
        threshold=threshold,
        samples=len(right),
        raw_accuracy=raw,
        kept=len(kept),
        kept_accuracy=kept_accuracy,
        gap=gap,
        relative_gap=None if gap is None or raw == 1 else gap / (1 - raw),
        verifier_accuracy=agree / len(right),
        auc=auc(right, scores),
        judge_versions=judge_versions,
    )


def reference_gap(right: Sequence[bool]) -> VerifierGap:
    """The reference as a verifier (score 1 when right, else 0): it keeps exactly the right
    samples, so its gap is 1 - raw accuracy and its relative gap 1, the upper bound."""
    return compute_gap(right, [float(r) for r in right], 1.0, REFERENCE)
