"""Wire models reject bad values with a message that names the field."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from services.schemas import Feedback, GenerateRequest, RewardRequest, Sample, VerifyRequest
from tests.utils.samples import make_sample


class TestFeedback:
    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("solution_score", 1.01),  # above the range
            ("reasoning_score", -0.1),  # below the range
            ("solution_score", float("nan")),  # NaN would poison the loss
            ("reasoning_score", float("inf")),
        ],
    )
    def test_out_of_range_scores_name_the_field(self, field: str, value: float) -> None:
        scores = {"solution_score": 0.5, "reasoning_score": 0.5, "is_correct": False, field: value}
        with pytest.raises(ValidationError, match=field):
            Feedback(**scores)

    def test_combined_is_the_mean_of_both_scores(self) -> None:
        assert Feedback(solution_score=1, reasoning_score=0.5, is_correct=True).combined == 0.75

    def test_missing_field_is_named(self) -> None:
        with pytest.raises(ValidationError, match="is_correct"):
            Feedback(solution_score=1, reasoning_score=1)  # type: ignore[call-arg]


class TestSample:
    def test_json_round_trip(self) -> None:
        sample = make_sample()
        assert Sample.model_validate_json(sample.model_dump_json()) == sample
        assert json.loads(sample.model_dump_json())["schema_version"] == 2

    @pytest.mark.parametrize(
        ("overrides", "field"),
        [
            ({"completion_token_ids": []}, "completion_token_ids"),  # nothing to train on
            ({"prompt_token_ids": [1, -2]}, "prompt_token_ids.1"),  # token ids are >= 0
            ({"weight_version": -1}, "weight_version"),
            ({"messages": []}, "messages"),
            ({"completion_logprobs": [-0.1, -0.2]}, "2 completion_logprobs for 3"),
            ({"completion_logprobs": [-0.1, 0.5, -0.2]}, "completion_logprobs.1"),  # p > 1
        ],
    )
    def test_invalid_fields_are_named(self, overrides: dict[str, object], field: str) -> None:
        with pytest.raises(ValidationError, match=field):
            make_sample(**overrides)

    def test_unknown_schema_version_is_rejected(self) -> None:
        raw = json.loads(make_sample().model_dump_json())
        raw["schema_version"] = 3
        with pytest.raises(ValidationError, match="schema_version"):
            Sample.model_validate(raw)

    def test_a_schema_1_entry_parses_without_logprobs(self) -> None:
        # what a generator from before schema 2 left in the stream: trained, but unmeasured
        raw = json.loads(make_sample().model_dump_json())
        raw["schema_version"] = 1
        del raw["completion_logprobs"]
        sample = Sample.model_validate(raw)
        assert sample.schema_version == 1 and sample.completion_logprobs is None

    def test_a_schema_2_entry_without_an_extracted_answer_parses(self) -> None:
        # what a generator from before the field left in the stream: no exploration bonus
        raw = json.loads(make_sample(extracted_answer="5").model_dump_json())
        assert raw["extracted_answer"] == "5"
        del raw["extracted_answer"]
        assert Sample.model_validate(raw).extracted_answer is None

    def test_logprobs_travel_with_their_tokens(self) -> None:
        sample = make_sample(completion_logprobs=[-0.5, -9999.0, 0.0])
        assert Sample.model_validate_json(sample.model_dump_json()) == sample

    def test_unknown_fields_are_rejected(self) -> None:
        raw = json.loads(make_sample().model_dump_json())
        raw["surprise"] = 1
        with pytest.raises(ValidationError, match="surprise"):
            Sample.model_validate(raw)


class TestRequests:
    def test_rule_method_needs_a_reference(self) -> None:
        with pytest.raises(ValidationError, match="reference_answer"):
            VerifyRequest(problem="1+1?", solution="2", method="rule")

    def test_rule_method_needs_no_problem(self) -> None:
        request = VerifyRequest(solution="Answer: 2", reference_answer="2", method="rule")
        assert request.problem is None

    @pytest.mark.parametrize(
        "body",
        [
            {"solution": "2", "reference_answer": "2"},  # auto: the server may ask the judge
            {"solution": "2", "reference_answer": "2", "method": "model"},
            {"solution": "2"},  # auto without a reference: the judge decides
        ],
    )
    def test_the_judge_needs_the_problem(self, body: dict[str, str]) -> None:
        with pytest.raises(ValidationError, match="needs the problem"):
            VerifyRequest.model_validate(body)

    def test_empty_problem_list_is_rejected(self) -> None:
        with pytest.raises(ValidationError, match="problems"):
            GenerateRequest(problems=[])

    def test_defaults_are_sane(self) -> None:
        request = GenerateRequest.model_validate({"problems": [{"problem": "1+1?"}]})
        assert request.n == 1 and request.wait
        assert 0 < request.sampling.temperature <= 1


class TestRewardRequest:
    """OpenRLHF's /get_reward body."""

    def test_numeric_labels_become_text(self) -> None:
        # a numeric label column (GSM8K-style answers) arrives as JSON numbers
        body = RewardRequest.model_validate(
            {"query": ["p r", "q s"], "prompts": ["p", "q"], "labels": [42, 0.5]}
        )
        assert body.labels == ["42", "0.5"]

    def test_labels_may_be_absent_or_empty(self) -> None:
        assert RewardRequest(query=["p r"], prompts=["p"]).labels is None
        assert RewardRequest(query=["p r"], prompts=["p"], labels=[""]).labels == [""]

    @pytest.mark.parametrize(
        ("body", "message"),
        [
            ({"query": ["p r", "q s"], "prompts": ["p"]}, "2 queries but 1 prompts"),
            ({"query": ["p r"], "prompts": ["p"], "labels": ["1", "2"]}, "1 queries but 2 labels"),
            ({"query": ["x r"], "prompts": ["p"]}, r"query 0 does not start with prompts\[0\]"),
            ({"query": ["r"], "prompts": [""], "labels": [""]}, "neither a prompt"),
            ({"query": ["p" + "r" * 32_001], "prompts": ["p"]}, "response in query 0 is over"),
            ({"query": [], "prompts": []}, "query"),
            ({"query": ["p r"] * 257, "prompts": ["p"] * 257}, "query"),  # over the batch limit
            ({"query": ["p r"], "prompts": ["p"], "extra": 1}, "extra"),
        ],
    )
    def test_bad_bodies_say_why(self, body: dict[str, object], message: str) -> None:
        with pytest.raises(ValidationError, match=message):
            RewardRequest.model_validate(body)
