"""The sampled metrics of every curve point and of `gvloop eval`: the unbiased pass@k against
brute force, means with their standard errors on hand-computed cases, distinct answers."""

from __future__ import annotations

import math
from fractions import Fraction
from itertools import combinations

import pytest

from gvloop.metrics import Metric, distinct_fraction, pass_at_k


def brute_force_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """The share of the k-subsets of n samples (c of them right) that hold a right one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(combinations(samples, k))
    return Fraction(sum(any(s) for s in subsets), len(subsets))


CASES = [
    (n, c, k)
    for n in (1, 2, 3, 4, 5, 8, 10)
    for c in range(n + 1)  # c = 0 (never right) to c = n (always right)
    for k in sorted({1, min(2, n), n // 2 or 1, n})  # k = n: pass@n is "any sample right"
]


@pytest.mark.parametrize(("n", "c", "k"), CASES)
def test_pass_at_k_is_the_share_of_k_subsets_with_a_right_sample(n: int, c: int, k: int) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(float(brute_force_pass_at_k(n, c, k)), abs=1e-12)


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (4, 0, 4, 0.0),  # no right sample: never
        (4, 4, 1, 1.0),  # every sample right: always
        (4, 1, 4, 1.0),  # k = n: any right sample is in the one subset
        (4, 1, 1, 0.25),  # pass@1 is c / n
        (10, 3, 1, 0.3),
        (4, 2, 2, 5 / 6),  # 1 - C(2, 2) / C(4, 2)
    ],
)
def test_pass_at_k_by_hand(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_is_exact_where_the_binomials_overflow_a_float() -> None:
    # C(2000, 1000) is about 1e600: a float ratio of binomials would be inf / inf
    expected = 1 - Fraction(math.comb(1997, 1000), math.comb(2000, 1000))
    assert pass_at_k(2000, 3, 1000) == pytest.approx(float(expected), rel=1e-12)
    assert pass_at_k(200, 1, 100) == pytest.approx(0.5)  # one right of 200: in half the subsets


def test_pass_at_k_refuses_k_above_n() -> None:
    with pytest.raises(AssertionError):
        pass_at_k(2, 1, 4)


def test_standard_error_of_the_mean_over_problems_by_hand() -> None:
    # three problems, n = 4 samples each, k = 2: c = 0, 2, 4 right
    per_problem = [pass_at_k(4, c, 2) for c in (0, 2, 4)]  # 0, 5/6, 1
    metric = Metric.mean_of(per_problem)
    # mean 11/18; deviations -11/18, 4/18, 7/18; sample variance (121 + 16 + 49) / 324 / 2
    # = 186/648 = 31/108; standard error sqrt(31/108 / 3) = sqrt(31/324) = sqrt(31) / 18
    assert metric.value == pytest.approx(11 / 18)
    assert metric.stderr == pytest.approx(math.sqrt(31) / 18)
    # a right-or-wrong outcome per problem: 3 of 4 right, sqrt(0.25 / 4)
    assert Metric.mean_of([1, 0, 1, 1]).stderr == pytest.approx(0.25)
    assert Metric.mean_of([0.7]) == Metric(value=0.7, stderr=0.0)  # one problem: no spread


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        (["5", "6", "7", "8"], 1.0),  # every sample its own answer
        (["5", "5", "5", "5"], 0.25),  # collapsed onto one: 1/n
        (["5", "5", "6", None], 0.75),  # no answer found counts as one answer
        ([None, None, None, None], 0.25),
        (["12"], 1.0),
    ],
)
def test_distinct_fraction(answers: list[str | None], expected: float) -> None:
    assert distinct_fraction(answers) == expected


def test_distinct_answers_over_problems() -> None:
    groups = [["5", "5", "6", "7"], ["3", "3", "3", "3"]]  # 3/4 and 1/4
    metric = Metric.mean_of([distinct_fraction(g) for g in groups])
    assert metric.value == pytest.approx(0.5)
    assert metric.stderr == pytest.approx(0.25)  # sd sqrt(0.125) / sqrt(2)
