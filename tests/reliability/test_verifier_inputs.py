"""Bad input against the verifier (agent B) over real HTTP, auth on, the tiny judge loaded:
schema-driven fuzzing of every operation, hostile bodies, and requests without the right
token. No 500s, no hangs, a 4xx with a detail for everything refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agent_b.app import create_app
from agent_b.settings import VerifierSettings
from tests.utils.figures import Figures
from tests.utils.fuzz import fuzz_api
from tests.utils.hostile import JSON, auth_cases, hostile_bodies, raw_post
from tests.utils.serve import serve_app

TOKEN = "verifier-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BODY = 64_000
VALID = {"problem": "What is 2 + 3?", "solution": "2 + 3 = 5. Answer: 5", "reference_answer": "5"}
PROMPT = "What is 2 + 3?"
# Each route, a valid body, and a required string in it for the hostile cases to replace.
BODIES = {
    "/verify": (VALID, ("problem",)),
    "/verify/batch": ({"items": [VALID]}, ("items", 0, "problem")),
    "/get_reward": (
        {"query": [PROMPT + " 2 + 3 = 5. Answer: 5"], "prompts": [PROMPT], "labels": ["5"]},
        ("prompts", 0),
    ),
}


@pytest.fixture(scope="module")
def verifier_url(tiny_model_dir: Path) -> Iterator[str]:
    settings = VerifierSettings(
        judge_model=str(tiny_model_dir), api_token=TOKEN, rule_workers=1, max_body_bytes=MAX_BODY
    )
    with serve_app(create_app(settings), ready_path="/health") as url:
        yield url


def test_fuzz_verifier_no_server_errors(verifier_url: str, figures: Figures) -> None:
    report = fuzz_api(verifier_url, headers=AUTH, max_examples=60, timeout_s=60)
    figures.report(inputs=report.inputs, statuses=report.by_status(), failures=len(report.failures))
    assert not report.failures, "\n".join(report.failures[:10])
    assert report.count(200) > 0 and report.count(422) > 0  # both modes reached the handlers


@pytest.mark.parametrize("path", sorted(BODIES))
def test_hostile_bodies_get_4xx_with_detail(verifier_url: str, path: str, figures: Figures) -> None:
    valid, text_path = BODIES[path]
    statuses = {}
    for case in hostile_bodies(valid, text_path, MAX_BODY):
        response = raw_post(verifier_url, path, case.content, {**AUTH, **case.headers})
        statuses[case.name] = response.status
        assert case.answered_well(response), (case.name, response.status, response.body[:300])
    assert httpx.post(verifier_url + path, json=valid, headers=AUTH, timeout=60).status_code == 200
    figures.report(
        inputs=len(statuses),
        server_errors=sum(s >= 500 for s in statuses.values()),
        statuses=statuses,
    )


def test_requests_without_the_token_get_401(verifier_url: str, figures: Figures) -> None:
    statuses = {}
    for name, headers in auth_cases(TOKEN):
        for path, (body, _) in BODIES.items():
            response = raw_post(verifier_url, path, json.dumps(body).encode(), {**JSON, **headers})
            statuses[f"{name} {path}"] = response.status
            assert response.status in {401, 431}, (name, path, response.status, response.body)
    figures.report(inputs=len(statuses), refused=sum(s in {401, 431} for s in statuses.values()))
