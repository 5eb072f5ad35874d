"""The judge's prompt and its yes/no arithmetic, without a model."""

from __future__ import annotations

import math

import pytest

from agent_b.judges.base import QUESTIONS, JudgeQuery, judge_messages, p_yes_from_logprobs
from agent_b.judges.remote import parse_version


def test_prompt_carries_problem_solution_and_question() -> None:
    messages = judge_messages(JudgeQuery("What is 2+2?", "2+2=4", "reasoning"), 512)
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert "What is 2+2?" in user and "2+2=4" in user
    assert user.endswith(QUESTIONS["reasoning"])


def test_long_texts_lose_their_middle_not_the_answer() -> None:
    solution = "start " + "blah " * 20_000 + "Answer: 42"
    problem = "P" * 50_000
    user = judge_messages(JudgeQuery(problem, solution, "correct"), 256)[1]["content"]
    assert len(user) < 256 * 4
    assert "Answer: 42" in user and user.startswith("Problem:\nPPP")
    assert "[...]" in user
    assert user.endswith(QUESTIONS["correct"])


@pytest.mark.parametrize(
    ("yes", "no", "expected"),
    [
        ([math.log(0.3)], [math.log(0.1)], 0.75),
        ([math.log(0.2), math.log(0.1)], [math.log(0.3)], 0.5),  # variants add up
        ([], [math.log(0.1)], 0.0),
        ([math.log(0.1)], [], 1.0),
        ([], [], 0.5),  # neither word: no opinion
        ([-900.0], [-1000.0], 1.0),  # tiny probabilities do not underflow to 0/0
        ([-1000.0], [-900.0], 0.0),
    ],
)
def test_p_yes_from_logprobs(yes: list[float], no: list[float], expected: float) -> None:
    assert p_yes_from_logprobs(yes, no) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("default", 0),  # vLLM's before any update_weight_version: the base model
        ("7", 7),  # what agent A's hot swap sets
        ("step-7", None),  # another trainer's naming: not a gvloop version
        (None, None),
    ],
)
def test_the_remote_judges_weight_version(raw: str | None, expected: int | None) -> None:
    assert parse_version(raw) == expected
