"""The whole pipeline as local processes (`gvloop up`): the embedded Redis, the vLLM engine,
the verifier, the generator API and the trainer, wired together through environment variables,
the same ones `docker-compose.yml` sets."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from agent_a.settings import EngineSettings
from agent_a.vllm_command import engine_command
from gvloop.demo import DEMO_RECIPE, Demo, DemoConfig, EvalPoint
from gvloop.launcher import Component, ComponentDiedError, Launcher, free_ports
from services.model_files import DEFAULT_MODEL, prepare_default_model
from services.redis_server import ensure_redis
from services.settings import CommonSettings

logger = logging.getLogger(__name__)

PYTHON_M_GVLOOP = [sys.executable, "-m", "gvloop"]
T = TypeVar("T")


class StackPorts(BaseModel):
    engine: int = 8000
    generator: int = 8001
    verifier: int = 8002
    trainer_metrics: int = 8003

    @classmethod
    def free(cls) -> StackPorts:
        """Ports free right now, for a stack beside others (tests, benchmarks)."""
        return cls(**dict(zip(cls.model_fields, free_ports(len(cls.model_fields)), strict=True)))

    @classmethod
    def from_settings(cls) -> StackPorts:
        """GVLOOP_ENGINE_PORT, GVLOOP_GENERATOR_PORT, GVLOOP_VERIFIER_PORT and
        GVLOOP_TRAINER_METRICS_PORT, as each component started alone would read them."""
        from agent_a.settings import GeneratorSettings
        from agent_b.settings import VerifierSettings
        from trainer.settings import TrainerSettings

        return cls(
            engine=EngineSettings().port,
            generator=GeneratorSettings().port,
            verifier=VerifierSettings().port,
            trainer_metrics=TrainerSettings().metrics_port,
        )


class Tokens(BaseModel):
    """The APIs' bearer tokens (GVLOOP_GENERATOR_API_TOKEN, GVLOOP_VERIFIER_API_TOKEN), handed
    to each component that calls them, as docker-compose.yml does."""

    generator: str | None = None
    verifier: str | None = None

    @classmethod
    def from_settings(cls) -> Tokens:
        from agent_a.settings import GeneratorSettings
        from agent_b.settings import VerifierSettings

        return cls(generator=GeneratorSettings().api_token, verifier=VerifierSettings().api_token)

    def client_env(self) -> dict[str, str]:
        env = {}
        if self.generator:
            env["GVLOOP_TRAINER_GENERATOR_TOKEN"] = self.generator
        if self.verifier:
            env["GVLOOP_GENERATOR_VERIFIER_TOKEN"] = self.verifier
        return env


def local_components(
    model: str,
    redis_url: str,
    data_dir: Path,
    ports: StackPorts,
    env: dict[str, str] | None = None,
    trainer: bool = True,
) -> list[Component]:
    """Engine and verifier first (they load models, in parallel), then the generator API that
    needs both, then the trainer. `env` adds settings for every component."""
    shared = {
        "GVLOOP_MODEL": model,
        "GVLOOP_REDIS_URL": redis_url,
        "GVLOOP_DATA_DIR": str(data_dir),
        "HF_HUB_OFFLINE": "1",
        **(env or {}),
    }
    local = "http://127.0.0.1"
    components = [
        Component(
            "engine",
            [*PYTHON_M_GVLOOP, "agent-a", "engine", "--port", str(ports.engine)],
            shared,
            health_url=f"{local}:{ports.engine}/health",
            ready_timeout_s=900,
        ),
        Component(
            "verifier",
            [*PYTHON_M_GVLOOP, "agent-b", "serve", "--port", str(ports.verifier)],
            shared,
            health_url=f"{local}:{ports.verifier}/health",
            identity="instance",
        ),
        Component(
            "generator",
            [*PYTHON_M_GVLOOP, "agent-a", "serve", "--port", str(ports.generator)],
            {
                **shared,
                "GVLOOP_GENERATOR_ENGINE_URLS": json.dumps([f"{local}:{ports.engine}"]),
                "GVLOOP_GENERATOR_VERIFIER_URL": f"{local}:{ports.verifier}",
            },
            health_url=f"{local}:{ports.generator}/health",
            identity="instance",
        ),
    ]
    if trainer:
        components.append(
            Component(
                "trainer",
                [*PYTHON_M_GVLOOP, "trainer", "run"],
                {
                    **shared,
                    "GVLOOP_TRAINER_GENERATOR_URL": f"{local}:{ports.generator}",
                    "GVLOOP_TRAINER_METRICS_PORT": str(ports.trainer_metrics),
                },
                health_url=f"{local}:{ports.trainer_metrics}/metrics"
                if ports.trainer_metrics
                else None,
                # on SIGTERM it checkpoints the steps taken since its last checkpoint
                stop_timeout_s=180,
            )
        )
    return components


def engine_component(model: str, settings: EngineSettings) -> Component:
    """One vLLM engine as a launcher component, exec'd directly rather than through
    `gvloop agent-a engine`: `Launcher.start` runs it, `wait_ready` waits for /health (raising
    with its last log lines if it dies or the deadline passes)."""
    argv, env = engine_command(model, settings)
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    return Component(
        "engine",
        argv,
        env,
        health_url=f"http://{host}:{settings.port}/health",
        ready_timeout_s=settings.start_timeout_s,
    )


async def _watch(launcher: Launcher, work: asyncio.Task[T]) -> T:
    """Run `work` while checking every second that no component died (which cancels it)."""
    while not work.done():
        try:
            launcher.check()
        except ComponentDiedError:
            work.cancel()
            raise
        await asyncio.wait({work}, timeout=1.0)
    return work.result()


def demo_stack(common: CommonSettings, model: str) -> tuple[CommonSettings, str, dict[str, str]]:
    """The settings, model path and environment a demo runs the stack with.

    Each demo starts from the base model: a Redis, checkpoints and logs of its own in
    <data_dir>/demo (emptied first), not those of a stack trained before, which the trainer
    would resume from; prepared models stay where they are. And unless GVLOOP_MAX_BACKLOG is
    set, the queue holds two trainer batches: generating further ahead of the trainer only
    makes stale samples, on the CPU the trainer needs, so the feeders get 429s beyond that.
    The trainer takes the demo's recipe, except where a GVLOOP_TRAINER_* variable says
    otherwise.
    """
    from trainer.settings import TrainerSettings

    trainer = TrainerSettings()

    if model == DEFAULT_MODEL:
        model = str(prepare_default_model(common.data_dir))
    demo_dir = common.data_dir / "demo"
    shutil.rmtree(demo_dir, ignore_errors=True)
    env = {"GVLOOP_CHECKPOINT_DIR": str(demo_dir / "checkpoints")}
    if "max_backlog" not in common.model_fields_set:
        env["GVLOOP_MAX_BACKLOG"] = str(2 * trainer.batch_size)
    for name, value in DEMO_RECIPE.items():
        if name.removeprefix("GVLOOP_TRAINER_").lower() not in trainer.model_fields_set:
            env[name] = value
    return common.model_copy(update={"data_dir": demo_dir, "checkpoint_dir": None}), model, env


def run_stack(
    common: CommonSettings,
    model: str,
    ports: StackPorts,
    demo: DemoConfig | None = None,
    env: dict[str, str] | None = None,
) -> list[EvalPoint] | None:
    """Start everything, then either run the demo and stop, or serve until Ctrl-C."""
    model_path = str(prepare_default_model(common.data_dir)) if model == DEFAULT_MODEL else model
    redis_url, embedded = ensure_redis(common.redis_url, common.data_dir)
    try:
        with Launcher(common.data_dir / "logs") as launcher:
            tokens = Tokens.from_settings()
            env = {**tokens.client_env(), **(env or {})}
            components = local_components(model_path, redis_url, common.data_dir, ports, env)
            for component in components:
                launcher.start(component)
                if component.name != "engine":  # the engine loads while the verifier does
                    launcher.wait_ready()
            logger.info(
                "pipeline up: POST problems to http://127.0.0.1:%d/problems, verifier at "
                "http://127.0.0.1:%d/verify, logs in %s",
                ports.generator,
                ports.verifier,
                common.data_dir / "logs",
            )
            if demo is None:
                launcher.wait()
                return None
            return asyncio.run(_run_demo(launcher, demo, ports, tokens, common.data_dir))
    finally:
        if embedded is not None:
            embedded.stop()


async def _run_demo(
    launcher: Launcher, config: DemoConfig, ports: StackPorts, tokens: Tokens, out_dir: Path
) -> list[EvalPoint]:
    local = "http://127.0.0.1"
    demo = Demo(
        config,
        generator_url=f"{local}:{ports.generator}",
        engine_url=f"{local}:{ports.engine}",
        verifier_url=f"{local}:{ports.verifier}",
        out_dir=out_dir,
        generator_token=tokens.generator,
        verifier_token=tokens.verifier,
    )
    try:
        return await _watch(launcher, asyncio.create_task(demo.run()))
    finally:
        await demo.aclose()
