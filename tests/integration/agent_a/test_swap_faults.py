"""Hot swaps over two real vLLM engines, and each way one engine can fail a swap: its flip, its
pause, its resume, its /health, or a flip that holds generation longer than agent A lets a
request wait. Each engine is reached through a proxy that fails or holds the one call the test
names (`tests.utils.engine_proxy`); what every engine serves is read from the engines
themselves: their version, whether they are paused, and their greedy output against
transformers on the checkpoint. The tests run in order; each starts from the weights the
previous one left."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from agent_a.engine_pool import FLIP_METHOD, RELOAD_METHOD
from gvloop.launcher import Launcher, free_ports
from gvloop.stack import engine_component
from services.redis_server import EmbeddedRedis
from tests.integration.agent_a.conftest import (
    Backends,
    RunningGenerator,
    common_settings,
    generator_settings,
    running_generator,
    tiny_engine,
)
from tests.integration.agent_a.helpers import GREEDY_TOKENS, PROMPT, reference_greedy
from tests.utils.engine_proxy import EngineProxy, Fault, engine_proxy

pytestmark = pytest.mark.slow


@dataclass
class Engines:
    generator: RunningGenerator
    urls: list[str]
    """The engines themselves, not their proxies."""
    proxies: list[EngineProxy]
    root: Path

    async def swap(self, checkpoint: str, version: int, strategy: str = "stage") -> httpx.Response:
        body = {
            "checkpoint_dir": str(self.root / checkpoint),
            "version": version,
            "strategy": strategy,
        }
        async with httpx.AsyncClient(base_url=self.generator.url, timeout=300) as http:
            return await http.post("/weights", json=body)

    async def served(self) -> list[tuple[str, bool, list[int]]]:
        """Each engine's weight version, whether it is paused, and its greedy continuation of
        the test prompt (None while paused: it would wait)."""
        return list(await asyncio.gather(*(engine_state(url) for url in self.urls)))


async def engine_state(url: str) -> tuple[str, bool, list[int]]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        version = (await http.get("/weight_info")).json()["weight_version"]
        paused = (await http.get("/is_paused")).json()["is_paused"]
        if paused:
            return version, paused, []
        model = (await http.get("/v1/models")).json()["data"][0]["id"]
        body = {
            "model": model,
            "prompt": prompt_ids(),
            "max_tokens": GREEDY_TOKENS,
            "temperature": 0.0,
            "return_token_ids": True,
        }
        (choice,) = (await http.post("/v1/completions", json=body)).json()["choices"]
        return version, paused, choice["token_ids"]


def prompt_ids() -> list[int]:
    return list(range(100, 100 + len(PROMPT)))  # any fixed tokens do


def greedy_of(checkpoint: Path) -> list[int]:
    return reference_greedy(checkpoint, prompt_ids(), GREEDY_TOKENS)


@pytest.fixture(scope="module")
def second_engine(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    (port,) = free_ports(1)
    with Launcher(tmp_path_factory.mktemp("second-engine"), echo=False) as launcher:
        launcher.start(engine_component(str(tiny_model_dir), tiny_engine(port)))
        launcher.wait_ready()
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
async def engines(
    backends: Backends,
    second_engine: str,
    redis_server: EmbeddedRedis,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Engines]:
    urls = [backends.engine_url, second_engine]
    with engine_proxy(urls[0]) as (first, first_url), engine_proxy(urls[1]) as (second, second_url):
        settings = generator_settings(backends, engine_urls=[first_url, second_url])
        common = common_settings(backends, redis_server, tmp_path_factory.mktemp("swap-faults"))
        async with running_generator(settings, common) as generator:
            engines = Engines(generator, urls, [first, second], backends.checkpoint_root)
            yield engines
            # the shared engine back on the weights the package's other tests start from
            restored = await engines.swap("base", 1000)
            assert restored.status_code == 200, restored.text


async def test_a_swap_lands_on_every_engine(engines: Engines) -> None:
    swap = await engines.swap("step_1", 101)
    assert swap.status_code == 200, swap.text
    assert swap.json()["engines"] == 2
    expected = greedy_of(engines.root / "step_1")
    assert await engines.served() == [("101", False, expected)] * 2


async def test_a_flip_failing_on_one_engine_rolls_every_engine_back(engines: Engines) -> None:
    engines.proxies[1].add(Fault("/collective_rpc", FLIP_METHOD, status=500))
    swap = await engines.swap("base", 102)
    assert swap.status_code == 502, swap.text
    assert "every engine recovered v101" in swap.json()["detail"]
    # the first engine had flipped to the base weights: it is back on step_1, like the other
    expected = greedy_of(engines.root / "step_1")
    assert await engines.served() == [("101", False, expected)] * 2
    assert (await engines.generator.service.health()).status == "ok"


async def test_a_failed_pause_abandons_the_swap_and_changes_nothing(engines: Engines) -> None:
    engines.proxies[1].add(Fault("/pause", status=500))
    swap = await engines.swap("base", 103)
    assert swap.status_code == 503, swap.text
    assert "abandoned, nothing changed" in swap.json()["detail"]
    expected = greedy_of(engines.root / "step_1")
    assert await engines.served() == [("101", False, expected)] * 2  # the first resumed too
    assert (await engines.generator.service.health()).status == "ok"


async def test_an_engine_that_does_not_resume_is_out_of_rotation_until_the_next_swap(
    engines: Engines,
) -> None:
    engines.proxies[1].add(Fault("/resume", status=500))
    swap = await engines.swap("base", 104)
    assert swap.status_code == 503, swap.text
    assert "did not resume: out of rotation" in swap.json()["detail"]
    health = await engines.generator.service.health()
    assert health.status == "degraded"
    assert [e.healthy for e in health.engines] == [True, False]
    base = greedy_of(engines.root / "base")
    assert await engines.served() == [("104", False, base), ("104", True, [])]

    swap = await engines.swap("step_1", 105)  # takes the paused engine back
    assert swap.status_code == 200, swap.text
    expected = greedy_of(engines.root / "step_1")
    assert await engines.served() == [("105", False, expected)] * 2
    assert (await engines.generator.service.health()).status == "ok"


async def test_no_engine_answering_health_swaps_nothing(engines: Engines) -> None:
    for proxy in engines.proxies:  # whoever else asks meanwhile gets the same answer
        proxy.add(Fault("/health", status=503, times=10**6))
    swap = await engines.swap("base", 106)
    for proxy in engines.proxies:
        proxy.clear()
    assert swap.status_code == 503, swap.text
    assert "no engine answers /health" in swap.json()["detail"]
    expected = greedy_of(engines.root / "step_1")
    assert await engines.served() == [("105", False, expected)] * 2

    swap = await engines.swap("base", 107)  # they answer again: both taken back
    assert swap.status_code == 200, swap.text
    assert swap.json()["engines"] == 2


async def test_a_request_waits_for_a_swap_no_longer_than_its_bound(
    engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every swap step has its own deadline, so only a bound shorter than them can run out
    monkeypatch.setattr(engines.generator.service.swapper, "max_swap_s", 1.0)
    flip = engines.proxies[1].add(Fault("/collective_rpc", FLIP_METHOD, hold=True))
    swap = asyncio.create_task(engines.swap("step_1", 108))
    await flip.wait_held()
    body = {"problems": [{"problem": PROMPT, "reference_answer": "42"}], "n": 1}
    async with httpx.AsyncClient(base_url=engines.generator.url, timeout=120) as http:
        waited = await http.post("/problems", json=body)
        flip.release()
        assert (await swap).status_code == 200
        after = await http.post("/problems", json=body)
    assert waited.status_code == 503, waited.text
    assert "a weight swap has held generation for 1s" in waited.json()["detail"]
    assert after.status_code == 200, after.text
    assert after.json()["data"][0]["solutions"][0]["weight_version"] == 108


async def test_a_stream_a_swap_pauses_records_its_stall_apart(engines: Engines) -> None:
    registry = engines.generator.app.state.metrics.registry

    def recorded(during_swap: str) -> tuple[float, float]:
        labels = {"during_swap": during_swap}
        count = registry.get_sample_value("gvloop_generator_stream_gap_seconds_count", labels)
        total = registry.get_sample_value("gvloop_generator_stream_gap_seconds_sum", labels)
        return count or 0.0, total or 0.0

    async def stream(http: httpx.AsyncClient, first_chunk: asyncio.Event) -> int:
        model = (await http.get("/v1/models")).json()["data"][0]["id"]
        body = {
            "model": model,
            "messages": [{"role": "user", "content": PROMPT}],
            "temperature": 0.0,
            "max_tokens": 1500,  # long enough to be streaming when the swap pauses it
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        tokens = 0
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                first_chunk.set()
                if line.startswith("data: {") and '"usage": {' in line:
                    tokens = json.loads(line.removeprefix("data: "))["usage"]["completion_tokens"]
        return tokens

    hold_s = 1.0
    before_swap, before_plain = recorded("yes"), recorded("no")
    async with httpx.AsyncClient(base_url=engines.generator.url, timeout=300) as http:
        assert await stream(http, asyncio.Event()) == 1500  # no swap while it streams
        reload = engines.proxies[1].add(Fault("/collective_rpc", RELOAD_METHOD, hold=True))
        first_chunk = asyncio.Event()
        streamed = asyncio.create_task(stream(http, first_chunk))
        await first_chunk.wait()
        # a reload pauses at once (nothing to stage first), then holds both engines paused
        swap = asyncio.create_task(engines.swap("step_1", 109, strategy="reload"))
        await reload.wait_held()
        await asyncio.sleep(hold_s)
        reload.release()
        assert (await swap).status_code == 200
        assert await streamed == 1500
    count, total = recorded("yes")
    assert count == before_swap[0] + 1
    assert total - before_swap[1] >= hold_s  # its longest gap holds the whole held flip
    assert recorded("no")[0] == before_plain[0] + 1
