"""The whole pipeline as local processes (`gvloop up`): the embedded Redis, the vLLM engine,
the verifier, the generator API and the trainer, wired together through environment variables,
the same ones `docker-compose.yml` sets."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from redis.exceptions import RedisError

from agent_a.settings import EngineSettings
from agent_a.vllm_command import engine_command, served_model_name
from gvloop.console import RunConsole, open_console
from gvloop.curve import EvalPoint
from gvloop.demo import DEMO_RECIPE, Demo, DemoConfig
from gvloop.launcher import Component, Launcher
from gvloop.monitor import Monitor
from gvloop.restarts import Restart, RestartRecord, RestartSettings
from gvloop.runstate import RunState
from gvloop.topology import StackTopology, local_host
from services.model_files import DEFAULT_MODEL, prepare_default_model
from services.queue import open_queue
from services.redis_checks import UntrustedRedisError, check_redis, redacted
from services.redis_server import ensure_redis
from services.settings import CommonSettings

logger = logging.getLogger(__name__)

PYTHON_M_GVLOOP = [sys.executable, "-m", "gvloop"]
T = TypeVar("T")


def local_components(
    model: str,
    redis_url: str,
    data_dir: Path,
    topology: StackTopology,
    env: dict[str, str] | None = None,
    trainer: bool = True,
    self_verify: bool = False,
) -> list[Component]:
    """Engine and verifier first (they load models, in parallel), then the generator API that
    needs both, then the trainer. `env` adds settings for every component. `self_verify`: the
    verifier's judge is the model the engine serves (`self_verify_env`)."""
    shared = {
        "GVLOOP_MODEL": model,
        "GVLOOP_REDIS_URL": redis_url,
        "GVLOOP_DATA_DIR": str(data_dir),
        "HF_HUB_OFFLINE": "1",
        **(env or {}),
    }
    engine, generator, verifier = topology.engine, topology.generator, topology.verifier
    judge = self_verify_env(model, topology) if self_verify else {}
    components = [
        Component(
            "engine",
            [*PYTHON_M_GVLOOP, "agent-a", "engine", "--port", str(engine.port)],
            shared,
            health_url=f"{engine.url}/health",
            ready_timeout_s=900,
        ),
        Component(
            "verifier",
            [*PYTHON_M_GVLOOP, "agent-b", "serve", "--port", str(verifier.port)],
            {**shared, **judge},
            health_url=f"{verifier.url}/health",
            identity="instance",
        ),
        Component(
            "generator",
            [*PYTHON_M_GVLOOP, "agent-a", "serve", "--port", str(generator.port)],
            {
                **shared,
                "GVLOOP_GENERATOR_ENGINE_URLS": json.dumps([engine.url]),
                "GVLOOP_GENERATOR_VERIFIER_URL": verifier.url,
            },
            health_url=f"{generator.url}/health",
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
                    "GVLOOP_TRAINER_GENERATOR_URL": generator.url,
                    "GVLOOP_TRAINER_METRICS_PORT": str(topology.trainer_metrics.port),
                },
                health_url=f"{topology.trainer_metrics.url}/metrics"
                if topology.trainer_metrics.port
                else None,
                # on SIGTERM it checkpoints the steps taken since its last checkpoint
                stop_timeout_s=180,
                may_finish=True,  # at GVLOOP_TRAINER_MAX_STEPS
            )
        )
    return components


def self_verify_env(model: str, topology: StackTopology) -> dict[str, str]:
    """The verifier's judge settings that make it the model agent A serves: the engine's
    OpenAI-compatible endpoint, under the name it serves `model` by. The judge then follows
    every hot swap, and each verdict reports the engine's weight version (`judge_version`)."""
    return {
        "GVLOOP_VERIFIER_JUDGE_BACKEND": "openai",
        "GVLOOP_VERIFIER_JUDGE_URL": topology.engine.url,
        "GVLOOP_VERIFIER_JUDGE_MODEL": served_model_name(model, CommonSettings().model_name),
    }


def engine_component(model: str, settings: EngineSettings) -> Component:
    """One vLLM engine as a launcher component, exec'd directly rather than through
    `gvloop agent-a engine`: `Launcher.start` runs it, `wait_ready` waits for /health (raising
    with its last log lines if it dies or the deadline passes)."""
    argv, env = engine_command(model, settings)
    return Component(
        "engine",
        argv,
        env,
        health_url=f"http://{local_host(settings.host)}:{settings.port}/health",
        ready_timeout_s=settings.start_timeout_s,
    )


def training_stack(
    common: CommonSettings, model: str, state_dir: Path | None = None
) -> tuple[CommonSettings, str, dict[str, str]]:
    """The settings, model path and environment a training run (the demo, or `--train`) runs
    the stack with.

    Each run starts from the base model: a Redis and checkpoints of its own in `state_dir`
    (default: <data_dir>/demo, emptied first), not those of a stack trained before, which the
    trainer would resume from; prepared models stay where they are. And unless
    GVLOOP_MAX_BACKLOG is set, the queue holds three trainer batches: the one being trained
    (its samples stay in the stream until its checkpoint acknowledges them) and two ahead,
    since the recipe skips groups without a right answer (half of them at first) and the
    trainer should never wait for generation; further ahead would only make stale samples, on
    the CPU the trainer needs. The trainer takes the demo's recipe, except where a
    GVLOOP_TRAINER_* variable says otherwise.
    """
    from trainer.settings import TrainerSettings

    trainer = TrainerSettings()

    if model == DEFAULT_MODEL:
        model = str(prepare_default_model(common.data_dir))
    if state_dir is None:
        state_dir = common.data_dir / "demo"
        shutil.rmtree(state_dir, ignore_errors=True)
    env = {"GVLOOP_CHECKPOINT_DIR": str(state_dir / "checkpoints")}
    update: dict[str, object] = {"data_dir": state_dir, "checkpoint_dir": None}
    if "max_backlog" not in common.model_fields_set:
        env["GVLOOP_MAX_BACKLOG"] = str(3 * trainer.batch_size)
        update["max_backlog"] = 3 * trainer.batch_size  # the feeders wait for this bound
    for name, value in DEMO_RECIPE.items():
        if name.removeprefix("GVLOOP_TRAINER_").lower() not in trainer.model_fields_set:
            env[name] = value
    return common.model_copy(update=update), model, env


def new_run_dir(data_dir: Path, kind: str | None = None) -> Path:
    """`<data_dir>/runs/<UTC time>[-<kind>]`: every run keeps its logs, metrics and curve."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return data_dir / "runs" / f"{stamp}{f'-{kind}' if kind else ''}"


def run_stack(
    common: CommonSettings,
    model: str,
    topology: StackTopology,
    demo: DemoConfig | None = None,
    env: dict[str, str] | None = None,
    *,
    run_dir: Path | None = None,
    verbose: bool = True,
    interactive: bool | None = None,
    resume: bool = False,
    status_dir: Path | None = None,
    self_verify: bool = False,
) -> list[EvalPoint] | None:
    """Start everything, then either run the demo and stop, or serve until Ctrl-C; a
    component that crashes is restarted as the GVLOOP_RESTART_* settings say.

    Each component's output goes to `<run_dir>/logs/<name>.log`. `verbose`: echoed to stdout
    too, prefixed, with gvloop's own events as log lines; otherwise the console shows gvloop's
    events alone (a live panel on a terminal, or plain lines; `interactive` overrides which).
    `resume`: the demo goes on from the curve and feeding progress saved in `run_dir`.
    `status_dir`: where `gvloop status` reads the components' restarts while the run goes on
    (the data directory `gvloop up` locks); None: nowhere. `self_verify`: the verifier's judge
    is the model the engine serves (`self_verify_env`)."""
    run_dir = run_dir or new_run_dir(common.data_dir, "demo" if demo is not None else None)
    state = RunState(run_dir, budget_s=demo.time_budget_s if demo else None)
    console = None if verbose else open_console(state, interactive)
    if console is None:
        state.listeners.append(lambda line: logger.info("%s", line))
    else:
        console.start()
    try:
        return _run(
            common,
            model,
            topology,
            demo,
            env or {},
            state,
            console,
            verbose,
            resume,
            status_dir,
            self_verify,
        )
    finally:
        if console is not None:
            console.stop()


def _run(
    common: CommonSettings,
    model: str,
    topology: StackTopology,
    demo: DemoConfig | None,
    env: dict[str, str],
    state: RunState,
    console: RunConsole | None,
    verbose: bool,
    resume: bool,
    status_dir: Path | None,
    self_verify: bool,
) -> list[EvalPoint] | None:
    from trainer.settings import TrainerSettings

    state.phase = "preparing the model"
    model_path = str(prepare_default_model(common.data_dir)) if model == DEFAULT_MODEL else model
    redis_url, embedded = ensure_redis(common.redis_url, common.data_dir)
    # the trainer's JSON lines go to the run directory, unless GVLOOP_TRAINER_METRICS_FILE says
    trainer_jsonl = TrainerSettings().metrics_file or state.run_dir / "trainer-metrics.jsonl"
    env = {"GVLOOP_TRAINER_METRICS_FILE": str(trainer_jsonl), **env}
    seen = trainer_jsonl.stat().st_size if trainer_jsonl.exists() else 0  # a resumed run's
    monitor: Monitor | None = None

    def restarted(restart: Restart) -> None:
        state.restarted(restart)
        if status_dir is not None:
            RestartRecord(pid=os.getpid(), components=state.restarts).save(status_dir)

    try:
        # before any component starts: an evicting or too old Redis stops the run here
        try:
            guarantees = asyncio.run(check_redis(redis_url, common.redis_timeout_s))
        except RedisError as exc:
            raise UntrustedRedisError(
                f"Redis at {redacted(redis_url)} does not answer ({exc}): start it, or set "
                "GVLOOP_REDIS_URL to one that runs"
            ) from exc
        if console is not None:  # the log goes to a file then: say it where it is read
            for warning in guarantees.warnings:
                state.event(f"warning: {warning}")
        if status_dir is not None:  # no restart yet: status shows 0 for each component
            RestartRecord(pid=os.getpid()).save(status_dir)
        log_dir = state.run_dir / "logs"
        with Launcher(
            log_dir,
            echo=verbose,
            on_state=state.component,
            restart=RestartSettings(),
            on_restart=restarted,
        ) as launcher:
            env = {**topology.client_env(), **env}
            components = local_components(
                model_path, redis_url, common.data_dir, topology, env, self_verify=self_verify
            )
            state.phase = "starting components"
            for component in components:
                launcher.start(component)
                # the engine loads while the verifier does, unless the engine is its judge
                if component.name != "engine" or self_verify:
                    launcher.wait_ready()
            state.event(
                f"pipeline up in {state.elapsed_s:.0f}s: POST problems to "
                f"{topology.generator.url}/problems, verifier at {topology.verifier.url}/verify"
            )
            state.phase = "serving (Ctrl-C stops)" if demo is None else "starting the demo"
            monitor = Monitor(
                state,
                trainer_jsonl,
                generator_metrics_url=f"{topology.generator.url}/metrics",
                queue=open_queue(common, redis_url, consumer="gvloop-monitor"),
                tensorboard_dir=state.run_dir / "tensorboard",
                jsonl_offset=seen,
            )
            if demo is None:
                try:
                    asyncio.run(_supervise(launcher, monitor, console, None))
                except KeyboardInterrupt:
                    state.event("Ctrl-C: stopping every component")
                return None
            work = _run_demo(demo, topology, common, redis_url, state, launcher, resume)
            return asyncio.run(_supervise(launcher, monitor, console, work))
    finally:
        state.phase = "stopped"
        if monitor is not None:  # every component stopped: the trainer's last lines are in
            monitor.finish()
        if embedded is not None:
            embedded.stop()
        if status_dir is not None:
            RestartRecord.remove(status_dir)


async def _supervise(
    launcher: Launcher,
    monitor: Monitor,
    console: RunConsole | None,
    work: Coroutine[Any, Any, T] | None,
    poll_s: float = 2.0,
) -> T | None:
    """Run `work` (None: until Ctrl-C) while checking that no component died (which cancels it)
    and refreshing what the console shows."""
    task = asyncio.create_task(work) if work is not None else None
    try:
        while task is None or not task.done():
            launcher.check()
            await monitor.poll()
            if console is not None:
                console.tick()
            if task is None:
                await asyncio.sleep(poll_s)
            else:
                await asyncio.wait({task}, timeout=poll_s)
        return task.result()
    finally:
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await monitor.aclose()


async def _run_demo(
    config: DemoConfig,
    topology: StackTopology,
    common: CommonSettings,
    redis_url: str,
    state: RunState,
    launcher: Launcher,
    resume: bool,
) -> list[EvalPoint]:
    demo = Demo(
        config,
        generator_url=topology.generator.url,
        engine_url=topology.engine.url,
        verifier_url=topology.verifier.url,
        out_dir=state.run_dir,
        generator_token=topology.generator_token,
        verifier_token=topology.verifier_token,
        queue=open_queue(common, redis_url, consumer="gvloop-demo"),
        state=state,
        checkpoint_root=common.checkpoint_root,
        trainer_finished=lambda: "trainer" in launcher.finished,
        resume=resume,
    )
    try:
        return await demo.run()
    finally:
        await demo.aclose()
        if demo.queue is not None:
            await demo.queue.aclose()
