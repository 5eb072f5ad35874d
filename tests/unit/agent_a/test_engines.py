"""Which engine gets a request, and how engine answers are read."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from agent_a.engine_pool import EnginePool, error_message, parse_version
from agent_a.errors import DependencyUnavailableError
from agent_a.settings import GeneratorSettings

URLS = ["http://a:8000", "http://b:8000", "http://c:8000"]


@pytest.fixture
async def pool() -> AsyncIterator[EnginePool]:
    settings = GeneratorSettings(_env_file=None, engine_urls=URLS)  # type: ignore[call-arg]
    pool = EnginePool(settings)
    yield pool
    await pool.aclose()


class TestPick:
    async def test_least_busy_engine_first(self, pool: EnginePool) -> None:
        a, b, c = pool.engines
        a.in_flight, b.in_flight, c.in_flight = 3, 1, 2
        assert pool.pick() is b

    async def test_ties_take_turns(self, pool: EnginePool) -> None:
        picked = {pool.pick().url for _ in range(6)}
        assert picked == set(URLS)

    async def test_engines_out_of_rotation_get_nothing(self, pool: EnginePool) -> None:
        a, b, c = pool.engines
        a.healthy = c.healthy = False
        assert {pool.pick().url for _ in range(4)} == {b.url}

    async def test_no_healthy_engine_is_a_503_saying_why(self, pool: EnginePool) -> None:
        for engine in pool.engines:
            engine.healthy, engine.problem = False, "paused: could not recover v3"
        with pytest.raises(DependencyUnavailableError, match="could not recover v3"):
            pool.pick()


@pytest.mark.parametrize(("raw", "version"), [("default", 0), ("0", 0), ("17", 17)])
def test_parse_version(raw: str, version: int) -> None:
    assert parse_version(raw) == version


def test_foreign_versions_are_refused() -> None:
    with pytest.raises(ValueError, match="not a gvloop version"):
        parse_version("step-3")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"error": {"message": "too long", "code": 400}}, "too long"),  # OpenAI-style
        ({"detail": "bad field"}, "bad field"),  # FastAPI-style
    ],
)
def test_error_message(body: dict[str, object], message: str) -> None:
    assert error_message(httpx.Response(400, json=body)) == message
    assert error_message(httpx.Response(500, text="Internal Server Error")) == (
        "Internal Server Error"
    )
