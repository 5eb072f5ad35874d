"""The metrics of `gvloop eval`: the unbiased pass@k estimator, majority voting, and means
with their standard errors."""

from __future__ import annotations

import math
import random
from itertools import combinations

import pytest

from gvloop.evaluate import EvalConfig, Metric, majority_right, pass_at_k
from services.schemas import VerifyResponse


@pytest.mark.parametrize(("n", "c", "k"), [(4, 1, 1), (4, 1, 4), (10, 3, 4), (8, 0, 2), (5, 5, 3)])
def test_pass_at_k_is_the_share_of_k_subsets_with_a_right_sample(n: int, c: int, k: int) -> None:
    samples = [True] * c + [False] * (n - c)
    subsets = list(combinations(samples, k))
    assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


def test_pass_at_1_is_the_fraction_right() -> None:
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)


def verdict(answer: str | None, right: bool) -> VerifyResponse:
    return VerifyResponse(
        solution_score=float(right),
        reasoning_score=float(right),
        is_correct=right,
        extracted_answer=answer,
        decided_by="rule",
        model="rules",
        latency_ms=0.0,
    )


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        ([("5", True), ("6", False), ("5", True), ("7", False)], True),
        ([("6", False), ("6", False), ("5", True), ("7", False)], False),
        ([("5", True), ("6", False)], True),  # a tie: the answer seen first
        ([("6", False), ("5", True)], False),
        ([(None, False), (None, False), ("5", True)], True),  # no answer is no vote
        ([(None, False)], False),
    ],
)
def test_majority_vote(answers: list[tuple[str | None, bool]], expected: bool) -> None:
    assert majority_right([verdict(a, r) for a, r in answers]) is expected


def test_mean_with_standard_error() -> None:
    values = [random.Random(0).random() for _ in range(50)]
    metric = Metric.mean_of(values)
    mean = sum(values) / 50
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 49)
    assert (metric.value, metric.stderr) == (pytest.approx(mean), pytest.approx(sd / math.sqrt(50)))
    assert Metric.mean_of([1.0]).stderr == 0.0


def test_n_below_k_is_refused() -> None:
    with pytest.raises(ValueError, match=r"n \(2\) must be at least k \(4\)"):
        EvalConfig(k=4, n=2)
    assert EvalConfig(k=4).samples == 4
