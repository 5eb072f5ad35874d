"""The generator's OpenAI-compatible routes, driven by the official `openai` client against the
real generator (real vLLM CPU engine, real verifier, real Redis): the model list, a chat
completion equal to what POST /problems generates, a streamed one, one with a reference
answer that lands in the training stream with its feedback, and errors in OpenAI's shape."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import openai
import pytest
import redis.asyncio as aioredis
from openai import AsyncOpenAI

from agent_b.settings import VerifierSettings
from gvloop.evaluate import EvalConfig, ServedModel, evaluate
from services.redis_server import EmbeddedRedis
from services.schemas import ProblemIn
from tests.integration.agent_a.conftest import (
    MAX_BACKLOG,
    Backends,
    RunningGenerator,
    common_settings,
    generator_settings,
    running_generator,
)
from tests.integration.agent_a.helpers import PROMPT, fill_queue, greedy, stream_samples
from tests.utils.checkers import write_checks

pytestmark = pytest.mark.slow

TOKEN = "test-token-for-openai-routes"
TOKENS = 8


def openai_client(url: str, token: str = "unused") -> AsyncOpenAI:
    # max_retries 0: the tests see each answer itself, not the client's retries of a 429
    return AsyncOpenAI(base_url=f"{url}/v1", api_key=token, max_retries=0, timeout=120)


@pytest.fixture
async def client(generator: RunningGenerator) -> AsyncIterator[AsyncOpenAI]:
    async with openai_client(generator.url) as client:
        yield client


async def served(generator: RunningGenerator, token: str | None = None) -> tuple[str, int]:
    async with generator.client(token) as client:
        version = (await client.weights()).version
    return generator.service.pool.model, version


async def test_models_lists_the_served_model_and_version(
    generator: RunningGenerator, client: AsyncOpenAI
) -> None:
    model, version = await served(generator)
    (card,) = (await client.models.list()).data
    assert card.id == model
    assert card.model_extra == {"root": model, "weight_version": version}


async def test_chat_completion_is_what_the_engine_generates(
    generator: RunningGenerator, client: AsyncOpenAI, redis_client: aioredis.Redis
) -> None:
    model, version = await served(generator)
    async with generator.client() as gvloop:
        expected = (await greedy(gvloop)).solution  # the same prompt, through POST /problems
    queued = await redis_client.xlen(generator.common.stream)

    completion = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": PROMPT}],
        temperature=0,
        max_tokens=TOKENS,
    )
    (choice,) = completion.choices
    assert choice.message.content == expected
    assert choice.finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == TOKENS
    assert completion.system_fingerprint == f"gvloop-v{version}"
    assert completion.model_extra is not None
    assert completion.model_extra["gvloop"] == {"weight_version": version}
    # no reference answer: served, not learned from
    assert await redis_client.xlen(generator.common.stream) == queued

    parts = [{"type": "text", "text": PROMPT[:10]}, {"type": "text", "text": PROMPT[10:]}]
    as_parts = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": parts}], temperature=0, max_tokens=TOKENS
    )
    assert as_parts.choices[0].message.content == expected


async def test_streamed_completion_adds_up_to_the_plain_one(
    generator: RunningGenerator, client: AsyncOpenAI
) -> None:
    model, version = await served(generator)
    request = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "temperature": 0,
        "max_tokens": TOKENS,
    }
    plain = await client.chat.completions.create(**request)
    stream = await client.chat.completions.create(
        **request, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == TOKENS
    assert {c.system_fingerprint for c in chunks} == {f"gvloop-v{version}"}


async def test_reference_answer_is_verified_and_queued(
    generator: RunningGenerator, client: AsyncOpenAI, redis_client: aioredis.Redis
) -> None:
    model, version = await served(generator)
    messages = [
        {"role": "developer", "content": "Answer briefly."},
        {"role": "user", "content": "What is 2 + 3?"},
    ]
    completion = await client.chat.completions.create(
        model=model,
        messages=messages,  # type: ignore[arg-type]
        n=2,
        max_tokens=TOKENS,
        seed=3,
        extra_body={"reference_answer": "5"},
    )
    assert completion.model_extra is not None
    learned = completion.model_extra["gvloop"]["samples"]
    assert [s["index"] for s in learned] == [0, 1] and all(s["queued"] for s in learned)
    samples = await stream_samples(redis_client, generator.common.stream)
    for choice, entry in zip(completion.choices, learned, strict=True):
        sample = samples[entry["sample_id"]]
        assert sample.solution == choice.message.content
        # the stream entry the trainer's checkpoints will commit
        stream = generator.common.stream
        assert await redis_client.xrange(stream, entry["queue_id"], entry["queue_id"])
        assert (sample.problem, sample.reference_answer) == ("What is 2 + 3?", "5")
        assert [m.role for m in sample.messages] == ["system", "user"]
        assert sample.weight_version == version
        assert sample.group is not None and sample.group.size == 2
        assert sample.feedback.is_correct == entry["feedback"]["is_correct"]
        assert sample.feedback.solution_score == entry["feedback"]["solution_score"]
        assert sample.feedback.reasoning_score == entry["feedback"]["reasoning_score"]
        assert 1 <= len(sample.completion_token_ids) <= TOKENS
        assert sample.completion_logprobs is not None
        assert len(sample.completion_logprobs) == len(sample.completion_token_ids)
    # the token ids and log-probs were asked of the engine for the sample, not passed on to
    # the client, who did not ask for them
    assert "token_ids" not in (completion.choices[0].model_extra or {})
    assert "prompt_token_ids" not in completion.model_extra
    assert all(choice.logprobs is None for choice in completion.choices)


async def test_streamed_reference_answer_ends_with_the_verdicts(
    generator: RunningGenerator, client: AsyncOpenAI, redis_client: aioredis.Redis
) -> None:
    model, _ = await served(generator)
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is 4 + 4?"}],
        max_tokens=TOKENS,
        seed=5,
        stream=True,
        logprobs=True,
        extra_body={"reference_answer": "8"},
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    *streamed, last = chunks
    assert last.choices == [] and last.model_extra is not None
    (entry,) = last.model_extra["gvloop"]["samples"]
    assert all("samples" not in (c.model_extra or {}).get("gvloop", {}) for c in streamed)
    sample = (await stream_samples(redis_client, generator.common.stream))[entry["sample_id"]]
    assert (sample.solution, sample.reference_answer) == (text, "8")
    assert sample.feedback.is_correct == entry["feedback"]["is_correct"]
    # the client asked for log-probabilities too: it got those the sample carries
    streamed_logprobs = [
        token.logprob
        for c in streamed
        for choice in c.choices
        for token in (choice.logprobs.content or [] if choice.logprobs else [])
    ]
    assert streamed_logprobs == pytest.approx(sample.completion_logprobs, abs=1e-6)
    assert len(streamed_logprobs) == len(sample.completion_token_ids)


async def test_errors_come_in_openai_shape(
    generator: RunningGenerator, client: AsyncOpenAI
) -> None:
    model, _ = await served(generator)
    user = [{"role": "user", "content": "Hi"}]
    with pytest.raises(openai.NotFoundError, match="does not exist here"):
        await client.chat.completions.create(model="gpt-4o", messages=user)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError) as unsupported:
        await client.chat.completions.create(
            model=model,
            messages=user,  # type: ignore[arg-type]
            tools=[{"type": "function", "function": {"name": "f"}}],
        )
    assert unsupported.value.param == "tools" and "Extra inputs" in unsupported.value.message
    with pytest.raises(openai.BadRequestError, match="last message must be the user's"):
        await client.chat.completions.create(
            model=model,
            messages=[*user, {"role": "assistant", "content": "Hello"}],  # type: ignore[list-item]
            extra_body={"reference_answer": "1"},
        )
    too_long = [{"role": "user", "content": "one two three " * 2000}]
    for stream in (False, True):  # refused before the stream starts: a status, not an event
        with pytest.raises(openai.BadRequestError, match="the engine refused"):
            await client.chat.completions.create(
                model=model,
                messages=too_long,  # type: ignore[arg-type]
                stream=stream,
            )
    async with httpx.AsyncClient(base_url=generator.url, timeout=30) as http:
        not_json = await http.post(
            "/v1/chat/completions",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
    assert not_json.status_code == 400
    assert not_json.json()["error"]["type"] == "invalid_request_error"


@pytest.fixture
async def guarded(
    backends: Backends, redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningGenerator]:
    """A generator with a token."""
    settings = generator_settings(backends, api_token=TOKEN)
    common = common_settings(backends, redis_server, tmp_path_factory.mktemp("openai"))
    async with running_generator(settings, common) as running:
        yield running


async def test_token_and_backpressure(
    guarded: RunningGenerator, redis_client: aioredis.Redis
) -> None:
    model, _ = await served(guarded, TOKEN)
    user = [{"role": "user", "content": "What is 1 + 1?"}]
    async with openai_client(guarded.url, "wrong-token") as stranger:
        with pytest.raises(openai.AuthenticationError, match="invalid bearer token"):
            await stranger.models.list()
    async with openai_client(guarded.url, TOKEN) as client:
        assert (await client.models.list()).data[0].id == model
        filler = await fill_queue(redis_client, guarded.common.stream, MAX_BACKLOG)
        try:
            with pytest.raises(openai.RateLimitError, match="the trainer is behind") as full:
                await client.chat.completions.create(
                    model=model,
                    messages=user,  # type: ignore[arg-type]
                    max_tokens=TOKENS,
                    extra_body={"reference_answer": "2"},
                )
            assert full.value.response.headers["retry-after"] == "10"
            # serving without learning needs no room in the queue
            served_anyway = await client.chat.completions.create(
                model=model,
                messages=user,  # type: ignore[arg-type]
                max_tokens=TOKENS,
            )
            assert served_anyway.choices[0].message.content
        finally:
            await redis_client.xdel(guarded.common.stream, *filler)


async def test_gvloop_eval_measures_the_served_model_through_the_generator(
    generator: RunningGenerator, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`gvloop eval URL`: one greedy and n sampled completions per problem through the
    generator's chat route, graded by the user's function with each row's fields."""
    spec = f"{write_checks(tmp_path_factory.mktemp('user'))}:by_field"
    problems = [
        ProblemIn(
            problem=f"What is {i} + 1?", reference_answer=str(i + 1), fields={"right": i == 0}
        )
        for i in range(4)
    ]
    before = await _ok_chats(generator)
    served = ServedModel(generator.url, None, EvalConfig(k=2, n=3, max_tokens=TOKENS))
    try:
        pass1, passk, _, distinct = await evaluate(
            served, problems, served.config, VerifierSettings(function=spec, rule_workers=1)
        )
    finally:
        await served.aclose()
    assert (pass1.value, passk.value) == (0.25, 0.25)  # only the first row counts as right
    assert 1 / 3 <= distinct.value <= 1.0
    assert await _ok_chats(generator) - before == 2 * len(problems)  # greedy + sampled


async def _ok_chats(generator: RunningGenerator) -> float:
    async with httpx.AsyncClient(base_url=generator.url, timeout=30) as http:
        metrics = (await http.get("/metrics")).text
    ok = 'gvloop_generator_chat_requests_total{outcome="ok"}'
    line = next((m for m in metrics.splitlines() if m.startswith(ok)), f"{ok} 0")
    return float(line.rsplit(" ", 1)[1])
