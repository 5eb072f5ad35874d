"""`gvloop agent-b serve` and `gvloop verify`."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from services.logs import setup_logging

if TYPE_CHECKING:
    from agent_b.settings import VerifierSettings
    from services.schemas import VerifyRequest, VerifyResponse

app = typer.Typer(help="Agent B: the verifier service.", no_args_is_help=True)

ModelOption = Annotated[
    str | None,
    typer.Option(
        help="Judge model (HF directory or name). Default: GVLOOP_VERIFIER_JUDGE_MODEL, "
        "else GVLOOP_MODEL."
    ),
]


def _settings(**overrides: object) -> VerifierSettings:
    from agent_b.settings import VerifierSettings

    return VerifierSettings(**{k: v for k, v in overrides.items() if v is not None})


@app.command("serve")
def serve(
    host: Annotated[str | None, typer.Option(help="Default: GVLOOP_VERIFIER_HOST.")] = None,
    port: Annotated[int | None, typer.Option(help="Default: GVLOOP_VERIFIER_PORT.")] = None,
    model: ModelOption = None,
) -> None:
    """Run the verifier API (POST /verify, /verify/batch; GET /health, /metrics, /docs)."""
    import uvicorn

    from agent_b.app import create_app
    from services.processes import exit_if_port_in_use
    from services.settings import CommonSettings

    settings = _settings(host=host, port=port, judge_model=model)
    _exit_if_function_unloadable(settings)
    exit_if_port_in_use(
        settings.host, settings.port, "choose another port with --port or GVLOOP_VERIFIER_PORT"
    )
    setup_logging(CommonSettings().log_level)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None)


def _exit_if_function_unloadable(settings: VerifierSettings) -> None:
    """A verifier function that cannot be imported is one line and exit 2, before serving."""
    from agent_b.functions import load_function

    if settings.function:
        try:
            load_function(settings.function)
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None


async def _verify_local(settings: VerifierSettings, request: VerifyRequest) -> VerifyResponse:
    from agent_b.metrics import VerifierMetrics
    from agent_b.scoring import setup_verifier

    verifier = setup_verifier(settings, VerifierMetrics())
    try:
        if request.method not in ("rule", "function"):  # neither needs a model
            await verifier.load()
        return await verifier.verify(request)
    finally:
        await verifier.aclose()


async def _verify_remote(url: str, token: str | None, request: VerifyRequest) -> VerifyResponse:
    from services.clients import VerifierClient

    async with VerifierClient(url, token, timeout_s=120) as client:
        return await client.verify(request)


def verify(
    solution: Annotated[str, typer.Option(help="The solution to score.")],
    problem: Annotated[
        str | None, typer.Option(help="The problem statement (not needed by --method rule).")
    ] = None,
    reference: Annotated[str | None, typer.Option(help="Reference final answer.")] = None,
    method: Annotated[
        Literal["auto", "rule", "model", "function"],
        typer.Option(
            help="auto: the verifier function when one is set (GVLOOP_VERIFIER_FUNCTION), else "
            "rule with a reference, else the judge."
        ),
    ] = "auto",
    fields: Annotated[
        str | None,
        typer.Option(help="The task row's other fields, a JSON object (for a verifier function)."),
    ] = None,
    url: Annotated[
        str | None, typer.Option(help="Verifier URL. Default: http://GVLOOP_VERIFIER_HOST:PORT.")
    ] = None,
    token: Annotated[
        str | None, typer.Option(help="Bearer token. Default: GVLOOP_VERIFIER_API_TOKEN.")
    ] = None,
    local: Annotated[
        bool, typer.Option("--local", help="Score in this process instead of calling a server.")
    ] = False,
    model: ModelOption = None,
) -> None:
    """Score one solution and print the verifier's JSON answer."""
    from agent_b.errors import VerifierError
    from services.clients import ServiceError, ServiceUnavailableError
    from services.schemas import VerifyRequest

    settings = _settings(judge_model=model)
    setup_logging("WARNING", sys.stderr)  # stdout is the JSON answer
    try:
        request = VerifyRequest.model_validate(
            {
                "problem": problem,
                "solution": solution,
                "reference_answer": reference,
                "method": method,
                "fields": json.loads(fields or "{}"),
            }
        )
        if local:
            _exit_if_function_unloadable(settings)
            response = asyncio.run(_verify_local(settings, request))
        else:
            base = url or f"http://{settings.host}:{settings.port}"
            response = asyncio.run(_verify_remote(base, token or settings.api_token, request))
    except (
        ValueError,  # ValidationError and json's JSONDecodeError among them
        VerifierError,
        ServiceError,
        ServiceUnavailableError,
    ) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(response.model_dump_json(indent=2))
