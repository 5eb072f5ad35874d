"""`gvloop agent-a engine` (the vLLM server) and `gvloop agent-a serve` (the generator API)."""

from __future__ import annotations

import logging
from typing import Annotated, Literal

import typer

from services.logs import setup_logging

app = typer.Typer(help="Agent A: the vLLM engine and the generator API.", no_args_is_help=True)
logger = logging.getLogger(__name__)


def _overrides(**values: object) -> dict[str, object]:
    return {k: v for k, v in values.items() if v is not None}


@app.command("engine")
def engine(
    model: Annotated[
        str | None,
        typer.Option(help="Model directory or hub name. Default: GVLOOP_MODEL."),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Default: GVLOOP_ENGINE_HOST.")] = None,
    port: Annotated[int | None, typer.Option(help="Default: GVLOOP_ENGINE_PORT.")] = None,
    dtype: Annotated[
        Literal["auto", "float32", "bfloat16", "float16"] | None,
        typer.Option(help="Default: GVLOOP_ENGINE_DTYPE."),
    ] = None,
    max_model_len: Annotated[
        int | None, typer.Option(help="Default: GVLOOP_ENGINE_MAX_MODEL_LEN.")
    ] = None,
    kv_cache_gib: Annotated[
        int | None, typer.Option(help="Default: GVLOOP_ENGINE_KV_CACHE_GIB.")
    ] = None,
    eager: Annotated[
        bool | None,
        typer.Option("--eager/--no-eager", help="Default: on for the CPU build, off on CUDA."),
    ] = None,
) -> None:
    """Run the vLLM engine (OpenAI API plus the hot-swap control routes).

    The same command on the CPU and the CUDA build. Keep its port private: the control routes
    take no API key."""
    import os

    from agent_a.settings import EngineSettings
    from agent_a.vllm_command import PublicBindError, check_bind_host, engine_command
    from services.model_files import ModelNotPreparedError, resolve_model
    from services.processes import PortInUseError, check_port_free, run_supervised
    from services.settings import CommonSettings

    common = CommonSettings()
    setup_logging(common.log_level)
    settings = EngineSettings(
        **_overrides(
            host=host,
            port=port,
            dtype=dtype,
            max_model_len=max_model_len,
            kv_cache_gib=kv_cache_gib,
            enforce_eager=eager,
        )
    )
    try:
        check_bind_host(settings.host)
        path = resolve_model(model or common.model, common.data_dir)
        check_port_free(
            settings.host, settings.port, "choose another port with --port or GVLOOP_ENGINE_PORT"
        )
    except (PublicBindError, ModelNotPreparedError, PortInUseError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    argv, env = engine_command(path, settings, name=common.model_name)
    logger.info("starting vLLM: %s", " ".join(argv))
    # A child, not an exec: vLLM ignores a SIGTERM that comes while its engine starts, and
    # its engine core outlives it when it is killed; this process sees to both.
    raise typer.Exit(run_supervised(argv, {**os.environ, **env}))


@app.command("serve")
def serve(
    host: Annotated[str | None, typer.Option(help="Default: GVLOOP_GENERATOR_HOST.")] = None,
    port: Annotated[int | None, typer.Option(help="Default: GVLOOP_GENERATOR_PORT.")] = None,
) -> None:
    """Run the generator API (POST /problems, /jobs, /weights, /health, /metrics).

    The engines, the verifier and Redis come from GVLOOP_* settings."""
    import uvicorn

    from agent_a.app import create_app
    from agent_a.settings import GeneratorSettings
    from services.processes import exit_if_port_in_use
    from services.settings import CommonSettings

    common = CommonSettings()
    settings = GeneratorSettings(**_overrides(host=host, port=port))
    exit_if_port_in_use(
        settings.host, settings.port, "choose another port with --port or GVLOOP_GENERATOR_PORT"
    )
    setup_logging(common.log_level)
    app = create_app(settings, common)
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None)
