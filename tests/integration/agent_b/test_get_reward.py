"""POST /get_reward (OpenRLHF's remote reward route) over real HTTP: the same verdicts as
/verify/batch, the reward field setting, and the 4xx of /verify/batch; /verify without a
problem under method 'rule'."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from agent_b.app import create_app
from agent_b.rewards import reward_value
from agent_b.settings import VerifierSettings
from services.schemas import VerifyResponse
from tests.integration.agent_b.conftest import Server
from tests.utils.serve import serve_app

PROMPTS = ["<user>What is 17 + 90?<assistant>", "<user>What is 6 x 7?<assistant>"]
RESPONSES = ["17 + 90 = 107. Answer: 107", "6 x 7 = 41. Answer: 41"]
BODY = {"query": [p + r for p, r in zip(PROMPTS, RESPONSES, strict=True)], "prompts": PROMPTS}


async def test_rewards_are_the_verdicts_of_verify_batch(http: httpx.AsyncClient) -> None:
    labels = ["107", ""]  # an empty label: the judge decides
    response = await http.post("/get_reward", json={**BODY, "labels": labels})
    assert response.status_code == 200, response.text
    got = response.json()
    items = [
        {"problem": p, "solution": r, "reference_answer": label or None}
        for p, r, label in zip(PROMPTS, RESPONSES, labels, strict=True)
    ]
    batch = (await http.post("/verify/batch", json={"items": items})).json()["data"]
    combined = [(v["solution_score"] + v["reasoning_score"]) / 2 for v in batch]
    assert got["rewards"] == pytest.approx(combined, abs=1e-5)
    assert got["scores"] == [float(v["is_correct"]) for v in batch]
    logs = got["extra_logs"]
    assert logs["solution_score"] == pytest.approx([v["solution_score"] for v in batch], abs=1e-5)
    assert logs["is_correct"] == got["scores"]
    # this server also asks the judge about the steps when a label decides
    assert (logs["decided_by_both"], logs["decided_by_model"]) == ([1.0, 0.0], [0.0, 1.0])


async def test_without_labels_the_judge_decides(http: httpx.AsyncClient) -> None:
    response = await http.post("/get_reward", json=BODY)
    assert response.status_code == 200, response.text
    assert response.json()["extra_logs"]["decided_by_model"] == [1.0, 1.0]


@pytest.mark.parametrize(
    ("body", "code", "names"),
    [
        ({**BODY, "prompts": PROMPTS[:1]}, 422, "2 queries but 1 prompts"),
        ({**BODY, "labels": ["107"]}, 422, "2 queries but 1 labels"),
        ({**BODY, "prompts": PROMPTS[::-1]}, 422, "query 0 does not start with prompts[0]"),
        # over the batch limit: the same 256 as /verify/batch
        ({"query": ["p r"] * 257, "prompts": ["p"] * 257}, 422, "at most 256 items"),
        ({"query": ["p" + "r" * 32_001], "prompts": ["p"]}, 422, "over 32000 characters"),
        ({"query": BODY["query"]}, 422, "prompts"),  # missing field
        ({**BODY, "extra": 1}, 422, "extra"),  # unknown field
        ({"query": ["x" * 60_000] * 70, "prompts": [""] * 70}, 413, "limit"),  # over 4 MB
    ],
)
async def test_bad_bodies_get_the_4xx_of_verify_batch(
    http: httpx.AsyncClient, body: dict, code: int, names: str
) -> None:
    response = await http.post("/get_reward", json=body)
    assert response.status_code == code, response.text
    assert names in response.text


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eA=="}]
)
async def test_token_is_required(verifier_server: Server, headers: dict) -> None:
    async with httpx.AsyncClient(base_url=verifier_server.url, timeout=30) as http:
        response = await http.post("/get_reward", json=BODY, headers=headers)
    assert response.status_code == 401 and "token" in response.json()["detail"]


async def test_rule_needs_no_problem_and_the_judge_does(http: httpx.AsyncClient) -> None:
    ruled = await http.post(
        "/verify", json={"solution": "Answer: 107", "reference_answer": "107", "method": "rule"}
    )
    assert ruled.status_code == 200 and ruled.json()["is_correct"] is True
    judged = await http.post("/verify", json={"solution": "Answer: 107", "reference_answer": "107"})
    assert judged.status_code == 422 and "needs the problem" in judged.text


async def test_get_reward_is_documented(http: httpx.AsyncClient) -> None:
    paths = (await http.get("/openapi.json")).json()["paths"]
    assert "/get_reward" in paths


@pytest.mark.parametrize("field", ["is_correct", "solution_score", "reasoning_score", "combined"])
def test_reward_field_setting(tmp_path: Path, field: str) -> None:
    # rules only, so no judge is needed (this one never loads)
    settings = VerifierSettings(
        judge_model=str(tmp_path / "no-model"), rule_workers=1, reward_field=field
    )
    labels = ["107", "42"]
    items = [
        {"problem": p, "solution": r, "reference_answer": label}
        for p, r, label in zip(PROMPTS, RESPONSES, labels, strict=True)
    ]
    with serve_app(create_app(settings)) as url, httpx.Client(base_url=url, timeout=60) as client:
        response = client.post("/get_reward", json={**BODY, "labels": labels})
        batch = client.post("/verify/batch", json={"items": items}).json()["data"]
    assert response.status_code == 200, response.text
    verdicts = [VerifyResponse.model_validate(v) for v in batch]
    assert response.json()["rewards"] == [reward_value(v, field) for v in verdicts]
    assert response.json()["scores"] == [1.0, 0.0]
