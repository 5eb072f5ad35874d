"""agent_b/rewards.py's adapters against a real verifier over HTTP, and in this process: a batch
over the API's limit split into calls the API takes, OpenRLHF's `reward_func` scoring in this
process as POST /get_reward does (and refusing what it refuses), and verl's `compute_score`
leaving the decision to the judge when there is no ground truth."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from agent_b.app import create_app
from agent_b.rewards import compute_score, openrlhf_reward_func, reward_function
from agent_b.settings import VerifierSettings
from services.schemas import MAX_BATCH
from tests.utils.serve import serve_app

PROMPTS = ["<user>What is 17 + 90?<assistant>", "<user>What is 6 x 7?<assistant>"] * 2
RESPONSES = ["17 + 90 = 107. Answer: 107", "6 x 7 = 41. Answer: 41"] * 2
LABELS = ["107", "42", "", ""]  # the empty ones: the judge decides
QUERIES = [p + r for p, r in zip(PROMPTS, RESPONSES, strict=True)]


@pytest.fixture(scope="module")
def settings(tiny_model_dir: Path) -> VerifierSettings:
    return VerifierSettings(judge_model=str(tiny_model_dir), rule_workers=1)


@pytest.fixture(scope="module")
def open_verifier(settings: VerifierSettings) -> Iterator[str]:
    """The verifier app served on a free port, without a token, its judge loaded."""
    with serve_app(create_app(settings), ready_path="/health") as url:
        yield url


def test_trl_reward_splits_a_batch_over_the_apis_limit(open_verifier: str) -> None:
    count = 2 * MAX_BATCH + 1  # three calls of /verify/batch, the last of one item
    # every third completion is wrong, so that a reward out of place shows
    completions = [f"Answer: {i + (i % 3 == 0)}" for i in range(count)]
    reward = reward_function(open_verifier, field="is_correct")
    try:
        rewards = asyncio.run(
            reward(
                prompts=[f"What is {i} + 0?" for i in range(count)],
                completions=completions,
                answer=[str(i) for i in range(count)],
            )
        )
    finally:
        reward.close()
    assert rewards == [float(i % 3 != 0) for i in range(count)]


def test_openrlhf_reward_func_in_process_answers_as_get_reward(
    open_verifier: str, settings: VerifierSettings
) -> None:
    reward_func = openrlhf_reward_func(local=True, settings=settings)
    local = reward_func(QUERIES, PROMPTS, LABELS)
    body = {"query": QUERIES, "prompts": PROMPTS, "labels": LABELS}
    served = httpx.post(f"{open_verifier}/get_reward", json=body, timeout=120)
    assert served.status_code == 200, served.text
    remote = served.json()
    assert local["scores"][:2] == remote["scores"][:2] == [1.0, 0.0]  # the labels decide
    assert local["rewards"] == pytest.approx(remote["rewards"], abs=1e-5)
    assert local["extra_logs"].keys() == remote["extra_logs"].keys()
    for key, values in remote["extra_logs"].items():
        assert local["extra_logs"][key] == pytest.approx(values, abs=1e-5), key
    assert local["extra_logs"]["decided_by_rule"] == [1.0, 1.0, 0.0, 0.0]
    assert local["extra_logs"]["decided_by_model"] == [0.0, 0.0, 1.0, 1.0]


def test_openrlhf_reward_func_refuses_what_get_reward_refuses(settings: VerifierSettings) -> None:
    # refused before anything is scored: no judge loads, no worker starts
    reward_func = openrlhf_reward_func(local=True, settings=settings)
    count = MAX_BATCH + 1
    with pytest.raises(ValidationError, match=f"at most {MAX_BATCH} items"):
        reward_func(["p r"] * count, ["p"] * count, ["r"] * count)


@pytest.mark.parametrize(
    ("ground_truth", "extra_info", "problem_key"),
    [
        ("", {"question": "What is 6 x 7?"}, "question"),  # verl's data preprocessing
        (None, {"prompt": "What is 6 x 7?", "split": "test"}, "prompt"),  # the key configured
    ],
)
def test_verl_compute_score_without_ground_truth_is_the_judges(
    open_verifier: str, ground_truth: object, extra_info: dict, problem_key: str
) -> None:
    solution = "6 x 7 = 42. Answer: 42"
    got = compute_score(
        "gsm8k", solution, ground_truth, extra_info, url=open_verifier, problem_key=problem_key
    )
    assert (got["decided_by_model"], got["decided_by_rule"], got["decided_by_both"]) == (1, 0, 0)
    verdict = httpx.post(
        f"{open_verifier}/verify",
        json={"problem": extra_info[problem_key], "solution": solution},
        timeout=120,
    ).json()
    assert got["score"] == pytest.approx(
        (verdict["solution_score"] + verdict["reasoning_score"]) / 2, abs=1e-5
    )
    assert got["is_correct"] == float(verdict["is_correct"])


def test_verl_compute_score_without_ground_truth_or_problem_says_so(open_verifier: str) -> None:
    # the problem under another key than the one configured: nothing for the judge to read
    with pytest.raises(ValueError, match="neither a problem"):
        compute_score("gsm8k", "Answer: 42", "", {"prompt": "What is 6 x 7?"}, url=open_verifier)
