"""How rule and judge numbers combine: the method that decides and the reasoning formula."""

from __future__ import annotations

import pytest

from agent_b.rules import ArithmeticCheck
from agent_b.scoring import compute_reasoning_score, decided_by
from agent_b.settings import VerifierSettings
from services.schemas import VerifyRequest


@pytest.mark.parametrize(
    ("arithmetic", "p_reasoning", "solution_score", "expected"),
    [
        (ArithmeticCheck(0, 0), 0.8, 0.0, 0.8),  # nothing to check: the judge alone
        (ArithmeticCheck(0, 0), None, 0.0, 0.0),  # no judge either: the outcome (wrong)
        (ArithmeticCheck(0, 0), None, 1.0, 1.0),  # ... (right)
        (ArithmeticCheck(1, 1), 0.2, 1.0, 0.5 * 1 + 0.5 * 0.2),  # w = 1/2
        (ArithmeticCheck(3, 3), 0.0, 1.0, 0.75),  # w = 3/4
        (ArithmeticCheck(3, 0), 1.0, 1.0, 0.25),  # wrong steps outweigh a confident judge
        (ArithmeticCheck(4, 2), None, 1.0, 0.8 * 0.5 + 0.2 * 1.0),  # right, half steps wrong
    ],
)
def test_reasoning_score(
    arithmetic: ArithmeticCheck, p_reasoning: float | None, solution_score: float, expected: float
) -> None:
    got = compute_reasoning_score(arithmetic, p_reasoning, solution_score)
    assert got == pytest.approx(expected)


@pytest.mark.parametrize(
    ("reference", "method", "judge_reasoning", "function", "expected"),
    [
        ("5", "auto", True, None, "both"),  # rule decides, judge adds to the reasoning score
        ("5", "auto", False, None, "rule"),
        ("5", "rule", True, None, "rule"),
        ("5", "model", True, None, "model"),  # the judge alone, reference ignored
        (None, "auto", True, None, "model"),
        (None, "model", False, None, "model"),
        # a verifier function decides method auto, with or without a reference
        ("5", "auto", True, "m:f", "function"),
        (None, "auto", False, "m:f", "function"),
        ("5", "rule", False, "m:f", "rule"),  # an explicit method still chooses
        ("5", "function", False, None, "function"),  # answered 422: no function
    ],
)
def test_decided_by(
    reference: str | None, method: str, judge_reasoning: bool, function: str | None, expected: str
) -> None:
    request = VerifyRequest(problem="1+4?", solution="5", reference_answer=reference, method=method)
    settings = VerifierSettings(judge_reasoning=judge_reasoning, function=function)
    assert decided_by(request, settings) == expected
