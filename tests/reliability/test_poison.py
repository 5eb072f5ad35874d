"""Poison in the stream: entries a consumer cannot train on (bad bytes, bad JSON, NaN or inf
scores, wrong schema, hostile sizes and depths) go to the dead-letter stream with the reason,
and the consumer keeps delivering the good samples around them."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from pydantic import ValidationError

from services.queue import PAYLOAD, SampleQueue
from services.schemas import Feedback
from tests.utils.figures import Figures
from tests.utils.samples import make_sample


def with_field(path: str, value: Any) -> bytes:
    """A valid sample's JSON with one (dotted) field replaced."""
    sample = json.loads(make_sample().model_dump_json())
    *parents, leaf = path.split(".")
    node = sample
    for key in parents:
        node = node[key]
    node[leaf] = value
    return json.dumps(sample).encode()


def with_raw(path: str, raw: str) -> bytes:
    """Like with_field, for values json.dumps will not write (a bare NaN is not JSON)."""
    return with_field(path, "__RAW__").replace(b'"__RAW__"', raw.encode())


# Each entry: fields as written to the stream by a buggy or hostile producer.
POISON: dict[str, dict[str, bytes]] = {
    "no payload field": {"other": b"x"},
    "empty payload": {PAYLOAD: b""},
    "not JSON": {PAYLOAD: b"{not json"},
    "non-UTF-8 bytes": {PAYLOAD: b"\xff\xfe\x00garbage"},
    "JSON null": {PAYLOAD: b"null"},
    "NaN score": {PAYLOAD: with_raw("feedback.solution_score", "NaN")},
    "inf score": {PAYLOAD: with_raw("feedback.reasoning_score", "Infinity")},
    "-inf by overflow": {PAYLOAD: with_raw("feedback.solution_score", "-1e999")},
    "'nan' as a string": {PAYLOAD: with_field("feedback.solution_score", "nan")},
    "score above 1": {PAYLOAD: with_field("feedback.solution_score", 1.5)},
    "future schema": {PAYLOAD: with_field("schema_version", 3)},
    "negative token id": {PAYLOAD: with_field("completion_token_ids", [5, -1])},
    "no completion": {PAYLOAD: with_field("completion_token_ids", [])},
    "a logprob too few": {PAYLOAD: with_field("completion_logprobs", [-0.5])},
    "unknown field": {PAYLOAD: with_field("extra", "x")},
    "huge text": {PAYLOAD: with_field("solution", "x" * 2_000_000)},
    "deeply nested": {PAYLOAD: with_raw("messages", "[" * 100_000 + "]" * 100_000)},
}


async def test_poison_goes_to_dead_letters_and_consumer_continues(
    redis_client: aioredis.Redis, stream_name: str, figures: Figures
) -> None:
    queue = SampleQueue(redis_client, stream_name, "trainer", consumer="t0")
    await queue.ensure_group()
    good = []
    for fields in POISON.values():
        sample = make_sample()
        await queue.put(sample)
        good.append(sample.sample_id)
        await redis_client.xadd(stream_name, fields)

    delivered = []
    for _ in range(2 * len(POISON)):
        batch = await queue.read(4, block_ms=50)
        delivered.extend(d.sample.sample_id for d in batch)
        await queue.ack([d.id for d in batch])
        if len(delivered) == len(good):
            break

    dead = await redis_client.xrange(queue.dead_letter_stream)
    reasons = {name: f[b"reason"].decode() for name, (_, f) in zip(POISON, dead, strict=True)}
    stats = await queue.stats()
    figures.report(
        poison_kinds=len(POISON),
        dead_lettered=len(dead),
        good_delivered=len(delivered),
        good_lost=len(set(good) - set(delivered)),
        left_in_stream=stats.length,
    )
    assert delivered == good
    assert len(dead) == len(POISON)
    assert (stats.length, stats.pending) == (0, 0)
    assert all(reasons.values()), reasons
    assert "solution_score" in reasons["NaN score"]
    assert "reasoning_score" in reasons["inf score"]
    assert "schema_version" in reasons["future schema"]
    assert "1 completion_logprobs for 3 completion tokens" in reasons["a logprob too few"]


@pytest.mark.parametrize(
    "make",
    [
        lambda: Feedback(solution_score=float("nan"), reasoning_score=0.5, is_correct=True),
        lambda: Feedback(solution_score=0.5, reasoning_score=float("inf"), is_correct=False),
        lambda: make_sample(completion_token_ids=[]),
    ],
    ids=["nan", "inf", "empty completion"],
)
def test_producer_cannot_build_a_poison_sample(make: Callable[[], object]) -> None:
    with pytest.raises(ValidationError):
        make()


async def test_sample_that_skipped_validation_is_dead_lettered(
    redis_client: aioredis.Redis, stream_name: str
) -> None:
    queue = SampleQueue(redis_client, stream_name, "trainer", consumer="t0")
    await queue.ensure_group()
    valid = make_sample()
    # model_construct skips validation, as a buggy producer might; NaN is written as null.
    feedback = Feedback.model_construct(
        solution_score=float("nan"), reasoning_score=0.5, is_correct=True
    )
    await queue.put(valid.model_copy(update={"feedback": feedback}))
    assert await queue.read(1, block_ms=50) == []
    assert (await queue.stats()).dead_letters == 1
