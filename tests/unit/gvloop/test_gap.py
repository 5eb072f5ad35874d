"""The generation-verification gap on hand-made sets: raw and kept accuracy, the gap and the
relative gap, the verifier's accuracy and its AUC (ties counting half), and the edges: nothing
kept, every sample right, no right sample; the reference as the upper bound."""

from __future__ import annotations

import random
from itertools import product

import pytest

from gvloop.gap import REFERENCE, auc, compute_gap, reference_gap


def brute_force_auc(right: list[bool], scores: list[float]) -> float:
    """Over every (right, wrong) pair: 1 when the right one scores higher, 1/2 on a tie."""
    pairs = [
        (s, w)
        for s, r in zip(scores, right, strict=True)
        if r
        for w, q in zip(scores, right, strict=True)
        if not q
    ]
    return sum(1.0 if s > w else 0.5 if s == w else 0.0 for s, w in pairs) / len(pairs)


def test_the_gap_by_hand() -> None:
    right = [True, True, False, False, False]
    scores = [0.9, 0.4, 0.6, 0.2, 0.4]
    gap = compute_gap(right, scores, 0.5, "judge", judge_versions=[3])
    assert gap.samples == 5 and gap.threshold == 0.5 and gap.judge_versions == [3]
    assert gap.raw_accuracy == pytest.approx(2 / 5)
    # kept: 0.9 (right) and 0.6 (wrong)
    assert (gap.kept, gap.kept_accuracy) == (2, pytest.approx(1 / 2))
    assert gap.gap == pytest.approx(1 / 2 - 2 / 5)
    assert gap.relative_gap == pytest.approx(0.1 / 0.6)
    # verdicts keep, drop, keep, drop, drop against right, right, wrong, wrong, wrong: 3 agree
    assert gap.verifier_accuracy == pytest.approx(3 / 5)
    # pairs: 0.9 beats 0.6, 0.2, 0.4; 0.4 loses to 0.6, beats 0.2, ties 0.4: 4.5 of 6
    assert gap.auc == pytest.approx(4.5 / 6)


@pytest.mark.parametrize(
    ("right", "scores", "expected"),
    [
        # every sample right: nothing to gain, the relative gap is undefined; no AUC (no wrong)
        (
            [True, True],
            [0.3, 0.7],
            {"raw_accuracy": 1.0, "kept": 1, "kept_accuracy": 1.0, "gap": 0.0},
        ),
        # nothing kept: no kept accuracy, no gap; the right one scored below the wrong one
        (
            [True, False],
            [0.1, 0.2],
            {"kept": 0, "kept_accuracy": None, "gap": None, "relative_gap": None, "auc": 0.0},
        ),
        # a filter that prefers the wrong answers: a negative gap, relative gap -1
        ([True, False], [0.2, 0.8], {"gap": -0.5, "relative_gap": -1.0, "verifier_accuracy": 0}),
        # one score for all: everything kept, no gap, the AUC of a coin
        (
            [True, False, False, True],
            [0.5] * 4,
            {"kept": 4, "gap": 0.0, "relative_gap": 0.0, "auc": 0.5},
        ),
        # no right sample: the kept are wrong, the gap 0 (relative 0 of a room of 1), no AUC
        ([False, False], [0.9, 0.1], {"kept_accuracy": 0.0, "gap": 0.0, "relative_gap": 0.0}),
    ],
)
def test_the_edges(right: list[bool], scores: list[float], expected: dict[str, object]) -> None:
    gap = compute_gap(right, scores, 0.5, "judge").model_dump()
    if all(right) or not any(right):
        assert gap["auc"] is None
    if all(right):
        assert gap["relative_gap"] is None
    assert {name: gap[name] for name in expected} == pytest.approx(expected)


def test_the_reference_is_the_upper_bound() -> None:
    gap = reference_gap([True, False, False, False])
    assert gap.verifier == REFERENCE and gap.judge_versions is None
    assert (gap.raw_accuracy, gap.kept, gap.kept_accuracy) == (0.25, 1, 1.0)
    assert (gap.gap, gap.relative_gap) == (0.75, 1.0)  # gap = 1 - raw
    assert (gap.verifier_accuracy, gap.auc) == (1.0, 1.0)
    # every sample right: gap 0, no relative gap; none right: nothing to keep
    assert reference_gap([True, True]).model_dump(include={"gap", "relative_gap"}) == {
        "gap": 0.0,
        "relative_gap": None,
    }
    assert reference_gap([False, False]).kept_accuracy is None


def test_auc_from_midranks_is_the_pairwise_share() -> None:
    rng = random.Random(0)
    for n in (2, 3, 5, 8, 13):
        for _ in range(20):
            # few distinct scores: many ties
            scores = [rng.choice((0.1, 0.3, 0.5, 0.7)) for _ in range(n)]
            right = [rng.random() < 0.5 for _ in range(n)]
            if all(right) or not any(right):
                assert auc(right, scores) is None
                continue
            assert auc(right, scores) == pytest.approx(brute_force_auc(right, scores))
    # every labelling of three tied-and-untied scores
    for right in product((True, False), repeat=3):
        if any(right) and not all(right):
            labels = list(right)
            assert auc(labels, [0.2, 0.2, 0.9]) == pytest.approx(
                brute_force_auc(labels, [0.2, 0.2, 0.9])
            )
