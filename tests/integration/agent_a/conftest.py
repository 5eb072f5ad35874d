"""Real parts for the agent A tests, started once for the package: vLLM's CPU engine on the
tiny model and the verifier (agent B) as processes, then the generator API in this process on
real HTTP (so tests can also reach its internals), writing to the session's Redis."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI

from agent_a.app import create_app
from agent_a.service import GeneratorService
from agent_a.settings import EngineSettings, GeneratorSettings
from gvloop.launcher import Component, Launcher, free_ports
from gvloop.stack import engine_component
from gvloop.tiny_model import make_tiny_model
from services.clients import GeneratorClient
from services.redis_server import EmbeddedRedis
from services.settings import CommonSettings

MAX_BACKLOG = 200


@dataclass(frozen=True)
class Backends:
    engine_url: str
    verifier_url: str
    checkpoint_root: Path
    base_dir: Path
    """The served model's directory (outside the checkpoint root)."""


@dataclass(frozen=True)
class RunningGenerator:
    url: str
    app: FastAPI
    common: CommonSettings

    @property
    def service(self) -> GeneratorService:
        return self.app.state.service

    def client(self, token: str | None = None) -> GeneratorClient:
        return GeneratorClient(self.url, token, timeout_s=300)


def tiny_engine(port: int) -> EngineSettings:
    """The tests' vLLM engine: float32, eager, a small KV cache (the tiny model needs little)."""
    return EngineSettings(
        port=port, dtype="float32", max_model_len=2048, kv_cache_gib=1, enforce_eager=True
    )


@pytest.fixture(scope="package")
def backends(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backends]:
    engine_port, verifier_port = free_ports(2)
    engine = tiny_engine(engine_port)
    serve_verifier = [sys.executable, "-m", "gvloop", "agent-b", "serve"]
    verifier = Component(
        "verifier",
        [*serve_verifier, "--model", str(tiny_model_dir), "--port", str(verifier_port)],
        {"HF_HUB_OFFLINE": "1", "GVLOOP_VERIFIER_RULE_WORKERS": "1"},
        health_url=f"http://127.0.0.1:{verifier_port}/health",
        ready_timeout_s=300,
    )
    root = tmp_path_factory.mktemp("checkpoints")
    with Launcher(tmp_path_factory.mktemp("logs"), echo=False) as launcher:
        launcher.start(engine_component(str(tiny_model_dir), engine))
        launcher.start(verifier)
        data_dir = CommonSettings().data_dir  # where the default model's tokenizer is
        make_tiny_model(root / "step_1", seed=1, data_dir=data_dir)  # while the engine loads
        make_tiny_model(root / "base", seed=0, data_dir=data_dir)  # served weights, in the root
        launcher.wait_ready()
        yield Backends(
            f"http://127.0.0.1:{engine_port}",
            f"http://127.0.0.1:{verifier_port}",
            root,
            tiny_model_dir,
        )


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[str]:
    """Run `app` with uvicorn on a free port of this event loop; yield its URL."""
    (port,) = free_ports(1)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    task = asyncio.create_task(server.serve())
    for _ in range(1200):
        if server.started or task.done():
            break
        await asyncio.sleep(0.05)
    if not server.started:
        server.should_exit = True
        await task
        raise AssertionError("the generator API did not start (see the log above)")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


def generator_settings(backends: Backends, **overrides: object) -> GeneratorSettings:
    fields: dict[str, object] = {
        "engine_urls": [backends.engine_url],
        "verifier_url": backends.verifier_url,
        "max_samples_per_request": 64,
        "retry_backoff_s": 0.1,
        "engine_wait_s": 60,
        "reload_timeout_s": 120,
    }
    fields.update(overrides)
    return GeneratorSettings(_env_file=None, **fields)  # type: ignore[call-arg]


def common_settings(backends: Backends, redis: EmbeddedRedis, data_dir: Path) -> CommonSettings:
    return CommonSettings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=data_dir,
        checkpoint_dir=backends.checkpoint_root,
        redis_url=redis.url,
        stream=f"test:{uuid.uuid4().hex}",
        max_backlog=MAX_BACKLOG,
    )


@asynccontextmanager
async def running_generator(
    settings: GeneratorSettings, common: CommonSettings
) -> AsyncIterator[RunningGenerator]:
    app = create_app(settings, common)
    async with serve(app) as url:
        yield RunningGenerator(url, app, common)


@pytest.fixture(scope="package")
async def generator(
    backends: Backends, redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningGenerator]:
    common = common_settings(backends, redis_server, tmp_path_factory.mktemp("generator"))
    async with running_generator(generator_settings(backends), common) as running:
        yield running
