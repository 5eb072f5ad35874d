"""How rule and judge numbers combine: the method that decides and the reasoning formula."""

from __future__ import annotations

import pytest

from agent_b.judges import Judge, JudgeQuery
from agent_b.metrics import VerifierMetrics
from agent_b.rules import ArithmeticCheck
from agent_b.scoring import Verifier, compute_reasoning_score, decided_by
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


class EngineJudge(Judge):
    """A judge on a server that reports its weight version (None: one that reports none);
    `swap_each_answer`: a hot swap lands after each of its answers."""

    name = "engine"
    ready = True

    def __init__(self, version: int | None, swap_each_answer: bool = False) -> None:
        self.version = version
        self.swap_each_answer = swap_each_answer
        self.reads = 0

    async def load(self) -> None:
        pass

    async def p_yes(self, query: JudgeQuery) -> float:
        if self.swap_each_answer and self.version is not None:
            self.version += 1
        return 0.8

    async def weight_version(self) -> int | None:
        self.reads += 1
        return self.version

    async def aclose(self) -> None:
        pass


class RightRules:
    """The rule workers' comparison, always equivalent."""

    async def equivalent(self, extracted: str, reference: str) -> bool:
        return True


@pytest.mark.parametrize(
    ("judge", "reference", "judge_reasoning", "expected"),
    [
        (EngineJudge(3), None, False, 3),  # the judge decides: its version
        (EngineJudge(3, swap_each_answer=True), None, False, 3),  # 3 before, 5 after: older
        (EngineJudge(None), None, False, None),  # a judge that reports no version (local)
        (EngineJudge(4), "5", True, 4),  # the judge adds its view of the steps: its version
        (EngineJudge(4), "5", False, None),  # the rules alone: no judge, no version read
    ],
)
async def test_each_verdict_reports_the_judges_version(
    judge: EngineJudge, reference: str | None, judge_reasoning: bool, expected: int | None
) -> None:
    settings = VerifierSettings(judge_reasoning=judge_reasoning)
    verifier = Verifier(settings, RightRules(), judge, VerifierMetrics())  # type: ignore[arg-type]
    request = VerifyRequest(problem="1+4?", solution="Answer: 5", reference_answer=reference)
    response = await verifier.verify(request)
    assert response.judge_version == expected
    assert judge.reads == (0 if response.decided_by == "rule" else 2)  # before and after
