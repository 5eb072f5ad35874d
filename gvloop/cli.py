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
) -> None:
    """Run the whole pipeline locally (embedded Redis, vLLM, verifier, generator, trainer)."""
    import signal
    import time

    from gvloop.demo import DemoConfig, curve_table
    from gvloop.launcher import ComponentDiedError, ComponentNotReadyError
    from gvloop.preflight import DataDirLockedError, RunLock, check_ports
    from gvloop.problems import PROBLEM_SETS
    from gvloop.stack import StackPorts, demo_stack, run_stack
    from services.processes import PortInUseError

    common = CommonSettings()
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
    env: dict[str, str] = {}
    try:
        # before anything starts, and on the data dir given: a demo empties <data_dir>/demo
        with RunLock(common.data_dir):
            check_ports(ports)
            if demo:
                common, model, env = demo_stack(common, model)
            curve = run_stack(common, model, ports, config if demo else None, env=env)
    except (
        DataDirLockedError,
        PortInUseError,
        ComponentDiedError,
        ComponentNotReadyError,
    ) as exc:
        typer.echo(f"gvloop up: {exc}", err=True)
        raise typer.Exit(1) from None
    if curve is not None:
        typer.echo("\nHeld-out accuracy of agent A, before training and after each hot swap:")
        typer.echo(curve_table(curve))
        typer.echo(f"curve: {common.data_dir / 'curve.json'}, {common.data_dir / 'curve.png'}")
        typer.echo(f"wall time: {time.monotonic() - started:.0f}s")
