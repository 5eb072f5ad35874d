"""The app's life cycle served over real HTTP, the `gvloop verify` command, and a schema-driven
fuzz of the running server (nothing a client sends may produce a 500)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import schemathesis
from hypothesis import HealthCheck, settings
from typer.testing import CliRunner

from agent_b.app import create_app
from agent_b.settings import VerifierSettings
from gvloop.cli import app as gvloop
from tests.integration.agent_b.conftest import Server
from tests.utils.serve import serve_app

RULE = {"problem": "1+1?", "solution": "1 + 1 = 2. Answer: 2", "reference_answer": "2"}


@contextmanager
def served(settings: VerifierSettings) -> Iterator[httpx.Client]:
    """create_app(settings) under uvicorn on a free port, and a client of it."""
    with serve_app(create_app(settings)) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


def wait_for_health(client: httpx.Client, deadline_s: float = 120) -> dict:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        response = client.get("/health")
        if response.status_code == 200 or response.json()["status"] == "failed":
            return response.json()
        assert response.json()["status"] == "loading"
        time.sleep(0.1)
    raise AssertionError("the verifier neither loaded nor failed")


def test_a_judge_that_fails_to_load_is_reported_and_rules_still_work(tmp_path: Path) -> None:
    settings = VerifierSettings(judge_model=str(tmp_path / "no-such-model"), rule_workers=1)
    with served(settings) as client:
        health = wait_for_health(client)
        assert health["status"] == "failed" and "no-such-model" in health["detail"]
        assert client.get("/health").status_code == 503
        # the rule path needs no model
        ruled = client.post("/verify", json=RULE)
        assert ruled.status_code == 200 and ruled.json()["is_correct"] is True
        # anything that needs the judge is refused with a retryable 503 that says why
        judged = client.post("/verify", json={"problem": "1+1?", "solution": "2"})
        assert judged.status_code == 503
        assert judged.headers["Retry-After"] == "5"
        assert "failed to load" in judged.json()["detail"]
        metrics = client.get("/metrics").text
        # a labelled series appears only once counted
        assert 'gvloop_verifier_errors_total{kind="judge_unavailable"}' in metrics


def test_create_app_serves_the_tiny_model(tiny_model_dir: Path) -> None:
    # what agent A's tests do: create_app(VerifierSettings(judge_model=...))
    settings = VerifierSettings(judge_model=str(tiny_model_dir), rule_workers=1)
    with served(settings) as client:
        assert wait_for_health(client)["status"] == "ok"
        response = client.post("/verify", json={"problem": "1+1?", "solution": "2"})
        assert response.status_code == 200 and response.json()["decided_by"] == "model"
        # by default a reference answer leaves the judge out entirely
        ruled = client.post("/verify", json=RULE).json()
        assert ruled["decided_by"] == "rule" and ruled["judge_p_reasoning"] is None


def test_verify_command_local(tiny_model_dir: Path) -> None:
    args = ["verify", "--problem", "What is 6 x 7?", "--solution", "6 x 7 = 42. Answer: 42"]
    result = CliRunner().invoke(
        gvloop, [*args, "--reference", "42", "--local", "--model", str(tiny_model_dir)]
    )
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["is_correct"] is True and printed["extracted_answer"] == "42"
    assert (printed["arithmetic_checked"], printed["arithmetic_correct"]) == (1, 1)


def test_verify_command_against_a_server(verifier_server: Server) -> None:
    args = ["verify", "--problem", "What is 6 x 7?", "--solution", "The answer is 41."]
    url = ["--url", verifier_server.url]
    result = CliRunner().invoke(gvloop, [*args, "--reference", "42", *url, "--token", "test-token"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["is_correct"] is False
    refused = CliRunner().invoke(gvloop, [*args, *url, "--token", "wrong"])
    assert refused.exit_code == 1 and "401" in refused.output


# The schema is the app's own; the cases go over real HTTP to the running server.
fuzzed = schemathesis.openapi.from_dict(create_app(VerifierSettings()).openapi())


@fuzzed.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzzed_requests_never_get_a_500(case: schemathesis.Case, verifier_server: Server) -> None:
    response = case.call(
        base_url=verifier_server.url,
        headers={"Authorization": f"Bearer {verifier_server.token}"},
        timeout=60,
    )
    assert response.status_code < 500, response.text
