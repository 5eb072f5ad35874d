"""The reward adapters (agent_b/rewards.py): verdicts to rewards, peers' inputs to verifier
requests, the TRL function on a stub scorer, and local scoring on the rules (no model)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from agent_b.rewards import (
    Scorer,
    VerifierReward,
    compute_score,
    message_text,
    openrlhf_requests,
    openrlhf_response,
    reward_function,
    reward_value,
    verdict_logs,
    verify_request,
)
from agent_b.settings import VerifierSettings
from services.schemas import RewardRequest, VerifyRequest, VerifyResponse
from tests.utils.checkers import write_checks


def verdict(**overrides: object) -> VerifyResponse:
    fields = {
        "solution_score": 1.0,
        "reasoning_score": 0.5,
        "is_correct": True,
        "extracted_answer": "5",
        "decided_by": "both",
        "model": "m",
        "latency_ms": 1.0,
    }
    return VerifyResponse.model_validate({**fields, **overrides})


class TestRewardValue:
    @pytest.mark.parametrize(
        ("field", "expected"),
        [
            ("combined", 0.75),  # S = (1 + 0.5) / 2, what the loss weighs samples by
            ("solution_score", 1.0),
            ("reasoning_score", 0.5),
            ("is_correct", 1.0),  # a bool, as a number
        ],
    )
    def test_each_field(self, field: str, expected: float) -> None:
        assert reward_value(verdict(), field) == expected  # type: ignore[arg-type]

    def test_logs_are_numbers_with_one_way_of_deciding(self) -> None:
        logs = verdict_logs(verdict(is_correct=False, solution_score=0.0))
        assert logs == {
            "solution_score": 0.0,
            "reasoning_score": 0.5,
            "is_correct": 0.0,
            "decided_by_rule": 0.0,
            "decided_by_model": 0.0,
            "decided_by_both": 1.0,
            "decided_by_function": 0.0,
        }


class TestInputs:
    @pytest.mark.parametrize(
        ("message", "role", "expected"),
        [
            ("plain text", "assistant", "plain text"),  # TRL's standard format
            ([{"role": "assistant", "content": "Answer: 5"}], "assistant", "Answer: 5"),
            (
                [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "first"},
                    {"role": "assistant", "content": "..."},
                    {"role": "user", "content": "What is 2 + 3?"},
                ],
                "user",
                "What is 2 + 3?",
            ),  # the last message of that role
            (
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}],
                "user",
                "Hi",
            ),  # content parts: the text ones
            ([{"role": "user", "content": "no answer yet"}], "assistant", ""),
        ],
    )
    def test_message_text(self, message: object, role: str, expected: str) -> None:
        assert message_text(message, role) == expected  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("problem", "reference", "method", "reference_answer"),
        [
            ("2 + 3?", "5", "auto", "5"),
            ("2 + 3?", "", "auto", None),  # an empty reference: the judge decides
            ("2 + 3?", None, "auto", None),
            ("2 + 3?", 5, "auto", "5"),  # numeric dataset columns
            (None, "5", "rule", "5"),  # no problem: only the rules can score
            ("", "5", "rule", "5"),
        ],
    )
    def test_verify_request(
        self, problem: str | None, reference: object, method: str, reference_answer: str | None
    ) -> None:
        request = verify_request(problem, "Answer: 5", reference)
        assert (request.method, request.reference_answer) == (method, reference_answer)
        assert request.problem == (problem or None)

    def test_nothing_to_score_against_is_an_error(self) -> None:
        with pytest.raises(ValueError, match="neither a problem"):
            verify_request(None, "Answer: 5", "")

    def test_openrlhf_queries_are_split_at_their_prompts(self) -> None:
        body = RewardRequest(
            query=["<user>2 + 3?<assistant>Answer: 5", "<user>1 + 1?<assistant>2"],
            prompts=["<user>2 + 3?<assistant>", "<user>1 + 1?<assistant>"],
            labels=["5", ""],
        )
        requests = openrlhf_requests(body)
        assert [r.solution for r in requests] == ["Answer: 5", "2"]
        assert [r.problem for r in requests] == body.prompts
        assert [r.reference_answer for r in requests] == ["5", None]

    def test_openrlhf_response_lists_one_value_per_query(self) -> None:
        verdicts = [verdict(), verdict(is_correct=False, solution_score=0.2, decided_by="model")]
        response = openrlhf_response(verdicts, "combined")
        assert response.rewards == [0.75, 0.35]
        assert response.scores == [1.0, 0.0]
        assert response.extra_logs.decided_by_model == [0.0, 1.0]
        assert response.extra_logs.solution_score == [1.0, 0.2]


class StubScorer(Scorer):
    """Records the requests; answers each with a verdict whose score encodes its index."""

    def __init__(self) -> None:
        super().__init__(VerifierSettings(), "http://unused", None, local=False)
        self.requests: list[VerifyRequest] = []

    async def score(self, requests: Sequence[VerifyRequest]) -> list[VerifyResponse]:
        self.requests += requests
        return [verdict(reasoning_score=i / 10) for i in range(len(requests))]


class TestTRLFunction:
    async def test_called_as_trl_calls_it(self) -> None:
        scorer, metrics = StubScorer(), {}
        reward = VerifierReward(scorer, "answer", "reasoning_score")
        rewards = await reward(
            prompts=[[{"role": "user", "content": "2 + 3?"}]] * 2,
            completions=[[{"role": "assistant", "content": "Answer: 5"}]] * 2,
            completion_ids=[[1, 2], [3]],
            answer=["5", ""],
            level=[1, 2],  # another column: a verifier function's field
            trainer_state=None,
            log_extra=lambda column, values: None,
            log_metric=lambda name, value: metrics.__setitem__(name, value),
        )
        assert rewards == [0.0, 0.1]  # one per completion, in order
        assert [(r.problem, r.solution, r.reference_answer) for r in scorer.requests] == [
            ("2 + 3?", "Answer: 5", "5"),
            ("2 + 3?", "Answer: 5", None),
        ]
        assert [r.fields for r in scorer.requests] == [{"level": 1}, {"level": 2}]
        assert metrics == {
            "verifier/solution_score": 1.0,
            "verifier/reasoning_score": 0.05,
            "verifier/is_correct": 1.0,
        }

    async def test_a_missing_reference_column_is_named(self) -> None:
        reward = VerifierReward(StubScorer(), "solution", "combined")
        with pytest.raises(KeyError, match=r"no dataset column 'solution'.*answer"):
            await reward(prompts=["2 + 3?"], completions=["5"], answer=["5"])

    async def test_without_references_the_judge_decides(self) -> None:
        scorer = StubScorer()
        await VerifierReward(scorer, None, "combined")(prompts=["2 + 3?"], completions=["5"])
        assert scorer.requests[0].reference_answer is None

    def test_trl_sees_an_async_function_with_a_name(self) -> None:
        from trl.trainer.utils import get_callable_name, is_async_callable

        reward = reward_function("http://unused")
        assert is_async_callable(reward)
        assert get_callable_name(reward) == "gvloop_verifier"


class TestLocalScoring:
    """Integer answers: the rules alone, compared in this process (no worker, no model)."""

    def test_trl_function(self) -> None:
        reward = reward_function(local=True, field="is_correct")
        try:
            rewards = asyncio.run(
                reward(
                    prompts=["What is 2 + 3?", "What is 4 + 4?"],
                    completions=["2 + 3 = 5. Answer: 5", "Answer: 9"],
                    answer=["5", 8],
                )
            )
        finally:
            reward.close()
        assert rewards == [1.0, 0.0]

    def test_trl_function_with_a_verifier_function(self, tmp_path: Path) -> None:
        """The dataset's other columns reach the user's function as its row's fields."""
        settings = VerifierSettings(function=f"{write_checks(tmp_path)}:three", rule_workers=1)
        reward = reward_function(local=True, settings=settings, field="reasoning_score")
        try:
            rewards = asyncio.run(
                reward(
                    prompts=["Name a pet.", "Name a pet."],
                    completions=["a cat", "a dog"],
                    answer=["cat", "cat"],
                    label=["cat", "dog"],
                    weight=[0.25, 0.75],
                )
            )
        finally:
            reward.close()
        assert rewards == [0.25, 0.75]

    def test_verl_compute_score(self) -> None:
        right = compute_score("gsm8k", "4 + 4 = 8. Answer: 8", "8", local=True)
        wrong = compute_score("gsm8k", "Answer: 9", "8", {"question": "4 + 4?"}, local=True)
        assert right["is_correct"] == 1.0 and wrong["is_correct"] == 0.0
        assert right["decided_by_rule"] == wrong["decided_by_rule"] == 1.0
        assert right["score"] == (right["solution_score"] + right["reasoning_score"]) / 2
        assert right["score"] > wrong["score"]
