"""The verifier API over real HTTP (`gvloop agent-b serve` on the tiny model): every answer
format, the model judge, batching, auth, bad input, metrics, docs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from services.clients import VerifierClient
from services.schemas import VerifyBatchRequest, VerifyRequest
from tests.integration.agent_b.conftest import Server

PROBLEM = "Tom has 1,200 apples and buys 34 more. How many does he have?"


@pytest.fixture
async def client(verifier_server: Server) -> AsyncIterator[VerifierClient]:
    async with VerifierClient(verifier_server.url, verifier_server.token) as client:
        yield client


async def test_health_names_the_model(http: httpx.AsyncClient) -> None:
    response = await http.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert response.json()["model"].endswith("tiny-seed0")


@pytest.mark.parametrize(
    ("solution", "reference", "correct", "extracted"),
    [
        ("1200 + 34 = 1234, so \\boxed{1234}", "1234", True, "1234"),  # \boxed{}
        ("1200 + 34 = 1235, so \\boxed{1235}", "1234", False, "1235"),
        ("1200 + 34 = 1234\n#### 1,234", "1234", True, "1,234"),  # ####, separators
        ("#### 1,243", "1,234", False, "1,243"),
        ("He has 1234 apples. Answer: 1234", "1,234", True, "1234"),  # Answer: N
        ("Answer: 1324", "1234", False, "1324"),
        ("The answer is 1,234.", "1234", True, "1,234"),  # The answer is N
        ("The answer is 1,234.", "1235", False, "1,234"),
        ("1200 and 34 make 1234", "1234", True, "1234"),  # the last number
        ("1200 and 34 make 1204", "1234", False, "1204"),
        ("Half of it: the answer is 0.5", "1/2", True, "0.5"),  # decimals vs fractions
        ("The answer is \\frac{3}{4}.", "0.75", True, "\\frac{3}{4}"),  # LaTeX
        ("\\boxed{\\frac{2}{3}}", "0.75", False, "\\frac{2}{3}"),
        ("It falls 5 degrees: Answer: -5", "-5", True, "-5"),  # negative numbers
        ("It falls 5 degrees: Answer: 5", "-5", False, "5"),
        ("I have no idea.", "1234", False, None),  # nothing to extract
    ],
)
async def test_reference_answers_decide_correctness(
    client: VerifierClient, solution: str, reference: str, correct: bool, extracted: str | None
) -> None:
    response = await client.verify(
        VerifyRequest(problem=PROBLEM, solution=solution, reference_answer=reference)
    )
    assert response.is_correct is correct
    assert response.solution_score == (1.0 if correct else 0.0)
    assert response.extracted_answer == extracted
    assert response.decided_by == "both"  # this server also asks the judge about the steps
    assert response.judge_p_correct is None
    assert response.judge_p_reasoning is not None and 0 <= response.judge_p_reasoning <= 1
    assert 0 <= response.reasoning_score <= 1
    assert response.latency_ms > 0


async def test_arithmetic_check_feeds_the_reasoning_score(client: VerifierClient) -> None:
    right = await client.verify(
        VerifyRequest(
            problem=PROBLEM,
            solution="1200 + 34 = 1234. Answer: 1234",
            method="rule",
            reference_answer="1234",
        )
    )
    wrong = await client.verify(
        VerifyRequest(
            problem=PROBLEM,
            solution="1200 + 34 = 1244. Answer: 1234",
            method="rule",
            reference_answer="1234",
        )
    )
    # method rule: no judge, so the outcome stands in for it: 1/2 * arithmetic + 1/2 * 1
    assert (right.arithmetic_checked, right.arithmetic_correct) == (1, 1)
    assert (wrong.arithmetic_checked, wrong.arithmetic_correct) == (1, 0)
    assert (right.reasoning_score, wrong.reasoning_score) == (1.0, 0.5)
    assert right.is_correct and wrong.is_correct  # the final answer is still right
    assert right.decided_by == wrong.decided_by == "rule"
    assert right.judge_p_reasoning is None


async def test_without_a_checkable_step_the_outcome_is_the_reasoning_score(
    client: VerifierClient,
) -> None:
    """A wrong answer with nothing to check gets S = 0, not 0.25: the loss' reward term must
    not push it up."""
    requests = [
        VerifyRequest(
            problem=PROBLEM, solution=f"Answer: {n}", method="rule", reference_answer="1234"
        )
        for n in (1234, 1243)
    ]
    right, wrong = (await client.verify_batch(VerifyBatchRequest(items=requests))).data
    assert (right.solution_score, right.reasoning_score) == (1.0, 1.0)
    assert (wrong.solution_score, wrong.reasoning_score) == (0.0, 0.0)


async def test_model_judge_decides_without_reference(client: VerifierClient) -> None:
    request = VerifyRequest(problem=PROBLEM, solution="1200 + 34 = 1234. Answer: 1234")
    first, second = await client.verify(request), await client.verify(request)
    assert first.decided_by == "model"
    assert first.judge_p_correct is not None and 0 <= first.judge_p_correct <= 1
    assert first.solution_score == first.judge_p_correct
    assert first.is_correct is (first.judge_p_correct >= 0.5)  # the default threshold
    assert first.model.endswith("tiny-seed0")
    assert first.model_dump(exclude={"latency_ms"}) == second.model_dump(
        exclude={"latency_ms"}
    )  # deterministic


async def test_method_model_ignores_the_reference(client: VerifierClient) -> None:
    response = await client.verify(
        VerifyRequest(
            problem=PROBLEM, solution="Answer: 7", reference_answer="1234", method="model"
        )
    )
    assert response.decided_by == "model" and response.judge_p_correct is not None


async def test_batch_matches_single_calls(client: VerifierClient) -> None:
    items = [
        VerifyRequest(
            problem=f"What is {i} + {i}?",
            solution=f"{i} + {i} = {2 * i + i % 2}",
            reference_answer=str(2 * i) if i % 3 else None,
        )
        for i in range(12)
    ]
    batch = await client.verify_batch(VerifyBatchRequest(items=items))
    singles = [await client.verify(item) for item in items]
    assert batch.count == len(batch.data) == 12
    for got, want in zip(batch.data, singles, strict=True):
        assert got.is_correct == want.is_correct
        assert got.extracted_answer == want.extracted_answer
        assert got.solution_score == pytest.approx(want.solution_score, abs=1e-5)
        assert got.reasoning_score == pytest.approx(want.reasoning_score, abs=1e-5)
    assert [r.is_correct for r in batch.data if r.decided_by != "model"] == [
        i % 2 == 0 for i in range(12) if i % 3
    ]


async def test_concurrent_requests_share_forward_passes(
    client: VerifierClient, http: httpx.AsyncClient
) -> None:
    def judge_counts(text: str) -> tuple[float, float]:
        values = dict(
            line.rsplit(" ", 1)
            for line in text.splitlines()
            if line.startswith("gvloop_verifier_judge_batch_size_")
        )
        return float(values["gvloop_verifier_judge_batch_size_count"]), float(
            values["gvloop_verifier_judge_batch_size_sum"]
        )

    before = judge_counts((await http.get("/metrics")).text)
    requests = [VerifyRequest(problem=f"{i} + 1?", solution=f"{i + 1}") for i in range(16)]
    await asyncio.gather(*(client.verify(r) for r in requests))
    after = judge_counts((await http.get("/metrics")).text)
    passes, prompts = after[0] - before[0], after[1] - before[1]
    assert prompts == 32  # two questions each
    assert passes < prompts


@pytest.mark.parametrize(
    ("headers", "code"),
    [({}, 401), ({"Authorization": "Bearer wrong"}, 401), ({"Authorization": "Basic eA=="}, 401)],
)
async def test_token_is_required(verifier_server: Server, headers: dict, code: int) -> None:
    async with httpx.AsyncClient(base_url=verifier_server.url, timeout=30) as http:
        for path, body in [
            ("/verify", {"problem": "1+1?", "solution": "2"}),
            ("/verify/batch", {"items": [{"problem": "1+1?", "solution": "2"}]}),
        ]:
            response = await http.post(path, json=body, headers=headers)
            assert response.status_code == code
            assert "token" in response.json()["detail"]
        # probes and scrapes stay open
        assert (await http.get("/health")).status_code == 200
        assert (await http.get("/metrics")).status_code == 200


VALID = {"problem": "1+1?", "solution": "2"}


@pytest.mark.parametrize(
    ("path", "content", "code", "names"),
    [
        ("/verify", b"x" * 4_100_000, 413, "limit"),  # over max_body_bytes
        ("/verify", b"{not json", 422, "JSON"),
        ("/verify", b'{"problem": "1+1?"}', 422, "solution"),  # missing field
        ("/verify", b'{"problem": "", "solution": "2"}', 422, "problem"),  # empty problem
        ("/verify", b'{"problem": "1+1?", "solution": "2", "score": 1}', 422, "score"),
        (
            "/verify",
            b'{"problem": "1+1?", "solution": "2", "method": "rule"}',
            422,
            "reference_answer",
        ),  # rule needs a reference
        ("/verify", b'{"problem": "1+1?", "solution": "2", "method": "vibes"}', 422, "method"),
        ("/verify", b'{"problem": 5, "solution": "2"}', 422, "problem"),
        ("/verify", b'{"problem": "1+1?", "solution": "\\ud800"}', 422, "solution"),
        ("/verify", b"[" * 5000 + b"]" * 5000, 400, "parsing"),  # deeply nested
        ("/verify/batch", b'{"items": []}', 422, "items"),
        ("/verify/batch", b'{"items": [{"problem": "1+1?"}]}', 422, "solution"),
    ],
)
async def test_bad_input_gets_a_4xx_naming_the_problem(
    http: httpx.AsyncClient, path: str, content: bytes, code: int, names: str
) -> None:
    response = await http.post(path, content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == code, response.text
    assert response.json()["detail"]
    assert names in response.text


async def test_oversized_text_and_batch_are_refused(http: httpx.AsyncClient) -> None:
    long = await http.post("/verify", json={"problem": "p", "solution": "x" * 32_001})
    assert long.status_code == 422 and "solution" in long.text
    many = await http.post("/verify/batch", json={"items": [VALID] * 257})
    assert many.status_code == 422 and "at most 256 items" in many.text


async def test_metrics_count_requests_errors_and_batches(http: httpx.AsyncClient) -> None:
    await http.post("/verify/batch", json={"items": [{**VALID, "reference_answer": "2"}] * 3})
    await http.post("/verify", json={"problem": "1+1?"})
    text = (await http.get("/metrics")).text
    assert 'gvloop_verifier_requests_total{route="/verify",status="422"}' in text
    assert 'gvloop_verifier_requests_total{route="/verify/batch",status="200"}' in text
    assert "gvloop_verifier_request_seconds_bucket" in text
    assert "gvloop_verifier_batch_items_count" in text
    assert 'gvloop_verifier_verifications_total{correct="true",decided_by="both"}' in text


async def test_docs_are_served(http: httpx.AsyncClient) -> None:
    assert (await http.get("/docs")).status_code == 200
    paths = (await http.get("/openapi.json")).json()["paths"]
    assert {"/verify", "/verify/batch", "/health", "/metrics"} <= set(paths)
