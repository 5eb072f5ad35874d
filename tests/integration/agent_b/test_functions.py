"""A user's verifier function (GVLOOP_VERIFIER_FUNCTION) from a file in a temporary directory,
through the real verifier app over HTTP: both answer shapes on /verify, /verify/batch and
/get_reward, and a function that raises, hangs or returns something else answered with a 422
that names it, while the next item is still scored."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from agent_b.app import create_app
from agent_b.settings import VerifierSettings
from gvloop.cli import app as gvloop
from tests.integration.agent_b.conftest import Server
from tests.utils.checkers import write_checks
from tests.utils.serve import serve_app


@pytest.fixture(scope="module")
def checks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checks(tmp_path_factory.mktemp("user"))


RULE_TIMEOUT_S = 5


@contextmanager
def verifier(function: str, tiny_model_dir: Path) -> Iterator[httpx.Client]:
    """The verifier app with `function`, served on a free port, and a client of it."""
    settings = VerifierSettings(
        function=function,
        judge_model=str(tiny_model_dir),
        rule_workers=1,
        rule_timeout_s=RULE_TIMEOUT_S,
    )
    # The client's timeout is far past the function's deadline and far short of the hanging
    # function's hour: a server that waited for the hung call would fail the test here.
    with serve_app(create_app(settings)) as url, httpx.Client(base_url=url, timeout=120) as client:
        yield client


def item(solution: str, reference: str | None = "Paris", **fields: object) -> dict:
    return {
        "problem": "Capital of France?",
        "solution": solution,
        "reference_answer": reference,
        "fields": fields,
    }


def test_a_number_decides_every_route(checks: Path, tiny_model_dir: Path) -> None:
    spec = f"{checks}:exact"
    with verifier(spec, tiny_model_dir) as client:
        right = client.post("/verify", json=item(" paris "))
        assert right.status_code == 200, right.text
        assert right.json() | {"latency_ms": 0} == {
            "solution_score": 1.0,
            "reasoning_score": 1.0,
            "is_correct": True,
            "extracted_answer": None,  # no number in it for the rules to find
            "decided_by": "function",
            "judge_p_correct": None,
            "judge_p_reasoning": None,
            "judge_version": None,
            "arithmetic_checked": 0,
            "arithmetic_correct": 0,
            "model": spec,
            "latency_ms": 0,
        }
        batch = client.post("/verify/batch", json={"items": [item("Paris"), item("Lyon")]})
        assert [v["is_correct"] for v in batch.json()["data"]] == [True, False]
        # OpenRLHF's remote reward: query = prompt + response, labels = references
        reward = client.post(
            "/get_reward",
            json={
                "query": ["Q: Paris", "Q: Rome"],
                "prompts": ["Q: ", "Q: "],
                "labels": ["Paris"] * 2,
            },
        )
        assert reward.status_code == 200, reward.text
        assert reward.json()["rewards"] == [1.0, 0.0]
        assert reward.json()["extra_logs"]["decided_by_function"] == [1.0, 1.0]
        metrics = client.get("/metrics").text
        assert (
            'gvloop_verifier_verifications_total{correct="true",decided_by="function"} 3.0'
            in metrics
        )


def test_three_scores_from_the_rows_fields(checks: Path, tiny_model_dir: Path) -> None:
    with verifier(f"{checks}:three", tiny_model_dir) as client:
        body = item("it is a cat", reference=None, label="cat", weight=0.25)
        response = client.post("/verify", json=body)
        assert response.status_code == 200, response.text
        verdict = response.json()
        assert (verdict["solution_score"], verdict["reasoning_score"]) == (1.0, 0.25)
        assert verdict["is_correct"] is True and verdict["extracted_answer"] == "cat"
        wrong = client.post("/verify", json=item("a dog", label="cat", weight=0.0)).json()
        assert (wrong["is_correct"], wrong["solution_score"], wrong["extracted_answer"]) == (
            False,
            0.0,
            None,
        )


@pytest.mark.parametrize(
    ("name", "bad", "message"),
    [
        ("raises", "boom", "raised KeyError: 'no grader for this one'"),
        ("hangs", "slow", f"did not return within {RULE_TIMEOUT_S}s"),
        ("ill_typed", "big", "returned float 1.5: expected a number in [0, 1]"),
        ("ill_typed", "dict", "returned dict {'score': 2.0}"),
    ],
)
def test_a_failing_function_is_a_422_that_names_it(
    checks: Path, tiny_model_dir: Path, name: str, bad: str, message: str
) -> None:
    spec = f"{checks}:{name}"
    with verifier(spec, tiny_model_dir) as client:
        response = client.post("/verify/batch", json={"items": [item("fine"), item(bad)]})
        assert response.status_code == 422
        detail = response.json()["detail"]
        assert detail.startswith(f"the verifier function {spec} ") and message in detail
        # the next item is scored (after a hang, by a fresh worker)
        assert client.post("/verify", json=item("fine")).json()["solution_score"] == 1.0
        assert (
            'gvloop_verifier_errors_total{kind="function_failed"} 1.0'
            in client.get("/metrics").text
        )


def test_method_function_without_a_function_is_a_422(verifier_server: Server) -> None:
    response = httpx.post(
        f"{verifier_server.url}/verify",
        json=item("Paris") | {"method": "function"},
        headers={"Authorization": f"Bearer {verifier_server.token}"},
        timeout=60,
    )
    assert response.status_code == 422
    assert "needs a verifier function" in response.json()["detail"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("{dir}/missing.py:score", "no file"),
        ("{checks}:nope", "has no function 'nope'"),
        ("no_such_module_here:score", "cannot import no_such_module_here"),
        ("score", "expected module:function or path/to/file.py:function"),
    ],
)
def test_serve_refuses_a_function_it_cannot_load(checks: Path, spec: str, message: str) -> None:
    spec = spec.format(dir=checks.parent, checks=checks)
    env = {**os.environ, "GVLOOP_VERIFIER_FUNCTION": spec}
    result = CliRunner().invoke(gvloop, ["agent-b", "serve", "--port", "1"], env=env)
    assert result.exit_code == 2
    assert message in result.output


def test_gvloop_verify_local_calls_the_function(checks: Path) -> None:
    env = {**os.environ, "GVLOOP_VERIFIER_FUNCTION": f"{checks}:three"}
    args = ["verify", "--local", "--solution", "a cat", "--problem", "What is it?"]
    result = CliRunner().invoke(
        gvloop, [*args, "--fields", '{"label": "cat", "weight": 1}'], env=env
    )
    assert result.exit_code == 0, result.output
    assert '"decided_by": "function"' in result.output and '"is_correct": true' in result.output
