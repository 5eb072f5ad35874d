"""The generator API over real HTTP, with a real vLLM CPU engine, a real verifier and a real
Redis: what a sample records, asynchronous jobs, refusals with clear 4xx, backpressure, a
verifier outage, auth, and several engine URLs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from transformers import AutoTokenizer

from agent_b.app import create_app as create_verifier
from agent_b.settings import VerifierSettings
from gvloop.launcher import free_ports
from services.redis_server import EmbeddedRedis
from services.schemas import (
    GenerateRequest,
    JobStatus,
    ProblemIn,
    SamplingParams,
    SwapRequest,
)
from tests.integration.agent_a.conftest import (
    MAX_BACKLOG,
    Backends,
    RunningGenerator,
    common_settings,
    generator_settings,
    running_generator,
    serve,
)
from tests.integration.agent_a.helpers import fill_queue, stream_samples, wait_engine_running
from tests.utils.checkers import write_checks

pytestmark = pytest.mark.slow

TOKEN = "test-token-for-agent-a"
SHORT = SamplingParams(temperature=0.8, max_tokens=16, seed=0)


@pytest.fixture
async def http(generator: RunningGenerator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=generator.url, timeout=120) as client:
        yield client


async def test_problems_come_back_verified_and_queued(
    generator: RunningGenerator, redis_client: aioredis.Redis, tiny_model_dir: Path
) -> None:
    request = GenerateRequest(
        problems=[
            ProblemIn(problem="What is 2 + 3?", reference_answer="5", id="p-add"),
            ProblemIn(problem="Name a prime number."),  # no reference: the judge decides
        ],
        n=2,
        sampling=SHORT,
        system_prompt="Answer briefly.",
    )
    async with generator.client() as client:
        served = (await client.weights()).version
        response = await client.generate(request)
    assert response.count == 2
    assert response.data[0].problem_id == "p-add"
    assert len(response.data[1].problem_id) == 32  # a fresh uuid
    samples = await stream_samples(redis_client, generator.common.stream)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for result in response.data:
        assert len(result.solutions) == 2
        for solution in result.solutions:
            assert solution.queued and solution.weight_version == served
            sample = samples[solution.sample_id]
            assert [m.role for m in sample.messages] == ["system", "user"]
            # The prompt ids are the chat template applied to the messages as sent...
            template = tokenizer.apply_chat_template(
                [m.model_dump() for m in sample.messages],
                add_generation_prompt=True,
                return_dict=True,
            )
            assert sample.prompt_token_ids == template["input_ids"]
            # ...and the completion ids are the very tokens of the returned solution.
            text = tokenizer.decode(sample.completion_token_ids, skip_special_tokens=True)
            # (vLLM leaves out a character that max_tokens cut in the middle of its bytes)
            assert text.rstrip("\ufffd") == solution.solution == sample.solution
            assert len(sample.completion_token_ids) == solution.completion_tokens
            assert sample.feedback.solution_score == solution.feedback.solution_score
            assert sample.feedback.is_correct == solution.feedback.is_correct
            assert (sample.problem_id, sample.sampling) == (result.problem_id, SHORT)
            assert sample.reference_answer == result.reference_answer


async def test_async_job_answers_at_once_then_finishes(http: httpx.AsyncClient) -> None:
    body = GenerateRequest(
        problems=[ProblemIn(problem=f"What is {i} + 1?") for i in range(3)],
        sampling=SHORT,
        wait=False,
    )
    response = await http.post("/problems", json=body.model_dump(mode="json"))
    assert response.status_code == 202, response.text
    job = JobStatus.model_validate(response.json())
    assert job.state == "pending" and job.result is None
    for _ in range(600):
        job = JobStatus.model_validate((await http.get(f"/jobs/{job.job_id}")).json())
        if job.state in ("done", "failed"):
            break
        await asyncio.sleep(0.2)
    assert job.state == "done", job.error
    assert job.result is not None and job.result.count == 3
    assert job.finished_at is not None and job.finished_at >= job.created_at

    assert (await http.get("/jobs/0123abcd")).status_code == 404
    assert (await http.get("/jobs/not-a-job-id")).status_code == 422


async def test_seeded_batch_over_one_step_budget_keeps_the_engine_alive(
    generator: RunningGenerator,
) -> None:
    # Prompts that add up to more tokens than one engine step takes (2048): with chunked
    # prefill (vLLM's default) the CPU build dies on the split, seeded requests.
    long = " ".join(["word"] * 400)
    request = GenerateRequest(
        problems=[ProblemIn(problem=f"{i}: {long}") for i in range(8)],
        n=2,
        sampling=SamplingParams(temperature=0.8, max_tokens=4, seed=7),
    )
    async with generator.client() as client:
        response = await client.generate(request)
        assert response.count == 8
        assert (await generator.service.health()).status == "ok"


def problems(count: int, **fields: object) -> dict[str, object]:
    return {"problems": [{"problem": f"What is {i} + {i}?"} for i in range(count)], **fields}


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        # greedy decoding cannot give n different samples
        (problems(1, n=2, sampling={"temperature": 0}), 422, "identical greedy samples"),
        # 9 problems x 8 samples is over the fixture's limit of 64 per request
        (problems(9, n=8), 422, "over the limit of 64"),
        # a typo in a field name is an error, not silently ignored
        (problems(1, temprature=0.5), 422, "extra_forbidden"),
        (problems(0), 422, "at least 1 item"),
        (problems(1, sampling={"max_tokens": 5000}), 422, "less than or equal to 4096"),
        (problems(1, n=0), 422, "greater than or equal to 1"),
        (problems(1, sampling={"min_tokens": 9, "max_tokens": 8}), 422, "must not exceed"),
        # a prompt longer than the engine's max_model_len (2048): the engine's reason, as 422
        ({"problems": [{"problem": "one two three " * 2000}]}, 422, "the engine refused"),
    ],
)
async def test_invalid_requests_get_4xx_naming_the_problem(
    http: httpx.AsyncClient, body: dict[str, object], status: int, message: str
) -> None:
    response = await http.post("/problems", json=body)
    assert response.status_code == status, response.text
    assert message in response.text


async def test_hostile_bodies_get_4xx(http: httpx.AsyncClient) -> None:
    too_big = await http.post("/problems", content=b"x" * 9_000_000)
    assert too_big.status_code == 413
    not_json = await http.post(
        "/problems", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert 400 <= not_json.status_code < 500
    bad_path = await http.post("/weights", json={"checkpoint_dir": "", "version": 1})
    assert bad_path.status_code == 422


async def test_full_queue_answers_429_before_generating(
    generator: RunningGenerator, http: httpx.AsyncClient, redis_client: aioredis.Redis
) -> None:
    stream = generator.common.stream
    filler = await fill_queue(redis_client, stream, MAX_BACKLOG)
    try:
        response = await http.post("/problems", json=problems(1))
        assert response.status_code == 429
        assert response.headers["retry-after"] == "10"
        assert "the trainer is behind" in response.json()["detail"]
        assert await redis_client.xlen(stream) == MAX_BACKLOG
    finally:
        await redis_client.xdel(stream, *filler)


async def test_concurrent_requests_cannot_overfill_the_queue(
    generator: RunningGenerator, http: httpx.AsyncClient, redis_client: aioredis.Redis
) -> None:
    # Room for two requests of 2 samples and four ask at once: each passes a check of the
    # stream alone, so the samples being generated must count too, or two requests would be
    # generated and verified only for the queue to refuse their samples.
    stream = generator.common.stream
    filler = await fill_queue(redis_client, stream, MAX_BACKLOG)
    await redis_client.xdel(stream, *filler[:4])
    try:
        body = problems(1, n=2, sampling={"max_tokens": 8})
        responses = await asyncio.gather(*(http.post("/problems", json=body) for _ in range(4)))
        assert sorted(r.status_code for r in responses) == [200, 200, 429, 429]
        served = [r.json()["data"][0]["solutions"] for r in responses if r.status_code == 200]
        assert [s["queued"] for solutions in served for s in solutions] == [True] * 4
        assert await redis_client.xlen(stream) == MAX_BACKLOG
    finally:
        await redis_client.xdel(stream, *filler[4:])


async def test_queue_filling_up_during_generation_returns_samples_unqueued(
    generator: RunningGenerator,
    backends: Backends,
    http: httpx.AsyncClient,
    redis_client: aioredis.Redis,
) -> None:
    stream = generator.common.stream
    # min_tokens: a sampled end of sequence must not end the request before the queue fills
    body = problems(1, n=2, sampling={"max_tokens": 400, "min_tokens": 400, "seed": 1})
    pending = asyncio.create_task(http.post("/problems", json=body))
    await wait_engine_running(backends.engine_url, 1, [pending])
    filler = await fill_queue(redis_client, stream, MAX_BACKLOG)  # another producer got there first
    try:
        response = await pending
        assert response.status_code == 200, response.text
        solutions = response.json()["data"][0]["solutions"]
        # Verified, returned, and said not to be queued: never dropped silently.
        assert [s["queued"] for s in solutions] == [False, False]
        assert all(s["feedback"]["model"] for s in solutions)
        assert await redis_client.xlen(stream) == MAX_BACKLOG
    finally:
        await redis_client.xdel(stream, *filler)


@pytest.fixture(scope="module")
async def degraded(
    backends: Backends, redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningGenerator]:
    """A second generator: a token, the engine under two URLs, and a verifier that is down."""
    (dead_port,) = free_ports(1)
    port = backends.engine_url.rsplit(":", 1)[1]
    settings = generator_settings(
        backends,
        engine_urls=[backends.engine_url, f"http://localhost:{port}"],
        verifier_url=f"http://127.0.0.1:{dead_port}",
        api_token=TOKEN,
        retry_attempts=2,
        retry_backoff_s=0.05,
    )
    common = common_settings(backends, redis_server, tmp_path_factory.mktemp("degraded"))
    async with running_generator(settings, common) as running:
        yield running


async def test_bearer_token_is_required_when_configured(degraded: RunningGenerator) -> None:
    async with httpx.AsyncClient(base_url=degraded.url, timeout=30) as http:
        assert (await http.post("/problems", json=problems(1))).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert (await http.get("/weights", headers=wrong)).status_code == 401
        assert (await http.get("/health")).status_code == 200  # for orchestrators: open


async def test_verifier_down_answers_503_and_queues_nothing(
    degraded: RunningGenerator, redis_client: aioredis.Redis
) -> None:
    async with httpx.AsyncClient(base_url=degraded.url, timeout=120) as http:
        response = await http.post(
            "/problems", json=problems(2), headers={"Authorization": f"Bearer {TOKEN}"}
        )
    assert response.status_code == 503
    detail = response.json()["detail"]
    assert "verifier (agent B)" in detail and "failed 2 times" in detail
    assert "was queued" in detail
    assert await redis_client.xlen(degraded.common.stream) == 0


async def test_swaps_reach_every_engine_url(degraded: RunningGenerator, backends: Backends) -> None:
    async with degraded.client(TOKEN) as client:
        served = (await client.weights()).version
        swap = await client.swap(
            SwapRequest(checkpoint_dir=str(backends.checkpoint_root / "base"), version=served)
        )
    assert (swap.engines, swap.version) == (2, served)
    health = await degraded.service.health()
    assert [e.healthy for e in health.engines] == [True, True]


async def test_health_and_metrics(generator: RunningGenerator, http: httpx.AsyncClient) -> None:
    health = await http.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok" and health.json()["redis"] is True
    text = (await http.get("/metrics")).text
    assert 'gvloop_generator_samples_total{queued="true"}' in text
    assert 'gvloop_generator_requests_total{outcome="ok"}' in text
    assert "gvloop_generator_weight_version" in text


async def test_a_users_verifier_function_grades_and_its_failure_queues_nothing(
    backends: Backends,
    redis_server: EmbeddedRedis,
    redis_client: aioredis.Redis,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The row's fields reach the function; a function that raises on a problem fails that
    request with a 502 naming it, and no sample of that problem is queued (nor trained on
    made-up scores): the client sees which function failed and why. The request's other
    problems were verified: their samples may be queued, each with its real feedback."""
    spec = f"{write_checks(tmp_path_factory.mktemp('user'))}:three"
    verifier = create_verifier(
        VerifierSettings(function=spec, judge_model=str(backends.base_dir), rule_workers=1)
    )
    common = common_settings(backends, redis_server, tmp_path_factory.mktemp("function"))
    graded = {"problem": "Name an animal.", "fields": {"label": "a", "weight": 0.5}}
    ungraded = {"problem": "Name a fruit."}  # no label: the function raises KeyError
    body = {"n": 2, "sampling": SHORT.model_dump()}
    async with (
        serve(verifier) as verifier_url,
        running_generator(generator_settings(backends, verifier_url=verifier_url), common) as gen,
        httpx.AsyncClient(base_url=gen.url, timeout=120) as http,
    ):
        ok = await http.post("/problems", json={"problems": [graded], **body})
        assert ok.status_code == 200, ok.text
        feedback = [s["feedback"] for s in ok.json()["data"][0]["solutions"]]
        assert [f["decided_by"] for f in feedback] == ["function"] * 2
        assert [f["reasoning_score"] for f in feedback] == [0.5] * 2  # from the row's fields
        assert await redis_client.xlen(common.stream) == 2

        failed = await http.post("/problems", json={"problems": [graded, ungraded], **body})
        assert failed.status_code == 502
        detail = failed.json()["detail"]
        assert f"the verifier function {spec} raised KeyError: 'label'" in detail, detail
        assert "no sample of problem" in detail and "was queued" in detail
        queued = await stream_samples(redis_client, common.stream)
        assert len(queued) >= 2
        assert {s.problem for s in queued.values()} == {graded["problem"]}
        assert all(s.feedback.reasoning_score == 0.5 for s in queued.values())
        metrics = (await http.get("/metrics")).text
        assert 'gvloop_generator_requests_total{outcome="502"} 1.0' in metrics
