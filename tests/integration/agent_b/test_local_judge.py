"""The logit judge on a real (tiny, random) transformers model: ranges, determinism, and
batched forward passes that equal one-at-a-time ones."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent_b.judges import JudgeQuery, LocalJudge
from agent_b.judges.local import word_token_ids
from agent_b.metrics import VerifierMetrics
from agent_b.settings import VerifierSettings

QUERIES = [
    JudgeQuery("What is 2 + 3?", "2 + 3 = 5. Answer: 5", "correct"),
    JudgeQuery("What is 2 + 3?", "2 + 3 = 6. Answer: 6", "reasoning"),
    JudgeQuery("A train goes 60 km in 1.5 h. Speed?", "60 / 1.5 = 40 km/h. " * 5, "correct"),
    JudgeQuery("What is 1/2 + 1/4?", "\\boxed{\\frac{3}{4}}", "reasoning"),
]


@pytest.fixture(scope="module")
async def judge(tiny_model_dir: Path) -> AsyncIterator[LocalJudge]:
    settings = VerifierSettings(
        judge_model=str(tiny_model_dir), max_batch_size=8, max_wait_ms=50, max_prompt_tokens=256
    )
    judge = LocalJudge(settings, VerifierMetrics())
    await judge.load()
    yield judge
    await judge.aclose()


def sample_count(metrics: VerifierMetrics, name: str, suffix: str) -> float:
    return metrics.registry.get_sample_value(f"{name}_{suffix}") or 0.0


async def test_probabilities_are_in_range_and_deterministic(judge: LocalJudge) -> None:
    assert judge.ready and judge.name.endswith("tiny-seed0")
    first = [await judge.p_yes(q) for q in QUERIES]
    again = [await judge.p_yes(q) for q in QUERIES]
    assert all(0.0 <= p <= 1.0 for p in first)
    assert first == again
    assert len(set(first)) > 1  # the prompt matters


async def test_batched_forward_equals_single_forwards(judge: LocalJudge) -> None:
    prompts = [judge.encode(q) for q in QUERIES]
    assert len({len(p) for p in prompts}) > 1  # different lengths: padding is exercised
    batched = judge.forward(prompts)
    singles = [judge.forward([p])[0] for p in prompts]
    assert batched == pytest.approx(singles, abs=1e-5)


async def test_concurrent_questions_are_coalesced(judge: LocalJudge) -> None:
    singles = [judge.forward([judge.encode(q)])[0] for q in QUERIES]
    batches_before = sample_count(judge.metrics, "gvloop_verifier_judge_batch_size", "count")
    prompts_before = sample_count(judge.metrics, "gvloop_verifier_judge_batch_size", "sum")
    results = await asyncio.gather(*(judge.p_yes(q) for q in QUERIES * 4))
    assert results == pytest.approx(singles * 4, abs=1e-5)
    batches = sample_count(judge.metrics, "gvloop_verifier_judge_batch_size", "count")
    prompts = sample_count(judge.metrics, "gvloop_verifier_judge_batch_size", "sum")
    assert prompts - prompts_before == 16
    assert batches - batches_before < 16  # fewer forward passes than questions
    assert batches - batches_before >= 2  # max_batch_size 8 bounds each one


async def test_long_prompts_are_cut_to_the_token_budget(judge: LocalJudge) -> None:
    query = JudgeQuery("Add them all. " * 300, "1 + 1 = 2. " * 3000 + "Answer: 42", "correct")
    ids = judge.encode(query)
    assert len(ids) <= 256
    assert judge.tokenizer.decode(ids).rstrip().endswith("assistant")  # ends at the answer slot
    assert 0.0 <= await judge.p_yes(query) <= 1.0


def test_yes_and_no_token_variants(judge: LocalJudge) -> None:
    yes = word_token_ids(judge.tokenizer, ("Yes",))
    assert len(yes) == 2  # "Yes" and " Yes"
    assert judge.tokenizer.decode(yes[:1]).strip() == "Yes"
    with pytest.raises(ValueError, match="no single token"):
        word_token_ids(judge.tokenizer, ("Supercalifragilisticexpialidocious",))
