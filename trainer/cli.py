"""`gvloop trainer ...` commands."""

from typing import Annotated

import typer

app = typer.Typer(help="The trainer worker.", no_args_is_help=True)


@app.command("run")
def run(
    batch_size: Annotated[int | None, typer.Option(help="Samples per optimizer step.")] = None,
    micro_batch_size: Annotated[
        int | None, typer.Option(help="Samples per forward/backward pass.")
    ] = None,
    lr: Annotated[float | None, typer.Option(help="Peak AdamW learning rate.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this step; 0: never.")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(help="Steps per checkpoint.")] = None,
    swap: Annotated[
        bool | None, typer.Option("--swap/--no-swap", help="Hot-swap agent A's weights.")
    ] = None,
    generator_url: Annotated[str | None, typer.Option(help="Agent A's generator API.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Prometheus port; 0: none.")] = None,
) -> None:
    """Train agent A's model on the sample stream: feedback-augmented steps, checkpoints, hot
    swaps. Every GVLOOP_TRAINER_* setting applies; these options override them. Run it under
    torchrun for several processes (DDP, or FSDP2 on GPUs)."""
    import asyncio
    import os

    from services.logs import setup_logging
    from services.processes import exit_if_port_in_use
    from services.redis_checks import UntrustedRedisError
    from services.settings import CommonSettings
    from trainer.settings import TrainerSettings
    from trainer.train import run as run_worker

    common = CommonSettings()
    setup_logging(common.log_level)
    options = {
        "batch_size": batch_size,
        "micro_batch_size": micro_batch_size,
        "lr": lr,
        "max_steps": max_steps,
        "checkpoint_every": checkpoint_every,
        "swap": swap,
        "generator_url": generator_url,
        "device": device,
        "metrics_port": metrics_port,
    }
    cfg = TrainerSettings(**{k: v for k, v in options.items() if v is not None})
    # under torchrun (`torchrun --nproc-per-node N -m gvloop trainer run`) only rank 0 serves
    if cfg.metrics_port and os.environ.get("RANK", "0") == "0":
        exit_if_port_in_use(
            cfg.metrics_host,
            cfg.metrics_port,
            "choose another port with --metrics-port or GVLOOP_TRAINER_METRICS_PORT",
        )
    try:
        asyncio.run(run_worker(cfg, common))
    except KeyboardInterrupt:  # Ctrl-C before set-up finished: nothing to commit yet
        raise typer.Exit(130) from None
    except UntrustedRedisError:  # logged, with what to set, where it was found
        raise typer.Exit(2) from None
