"""Factories for wire models, valid by default; tests override what they exercise."""

from __future__ import annotations

from typing import Any

from services.schemas import ChatMessage, Feedback, Sample, SamplingParams


def make_sample(**overrides: Any) -> Sample:
    fields: dict[str, Any] = {
        "problem_id": "p1",
        "problem": "What is 2 + 3?",
        "reference_answer": "5",
        "messages": [ChatMessage(role="user", content="What is 2 + 3?")],
        "prompt_token_ids": [1, 2, 3, 4],
        "completion_token_ids": [5, 6, 7],
        "sampling": SamplingParams(),
        "solution": "2 + 3 = 5. Answer: 5",
        "feedback": Feedback(solution_score=1.0, reasoning_score=0.8, is_correct=True),
        "weight_version": 0,
        "model": "tiny",
    }
    fields.update(overrides)
    return Sample(**fields)
