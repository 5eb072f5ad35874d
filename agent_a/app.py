"""The generator API's FastAPI app: `create_app(settings)`. Start-up waits for the engines and
opens the queue; shutdown cancels running jobs and closes every client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from agent_a.errors import AgentAError
from agent_a.routes import public, router
from agent_a.service import GeneratorService
from agent_a.settings import GeneratorSettings
from services.server import install_common
from services.settings import CommonSettings


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.service = await GeneratorService.start(app.state.settings, app.state.common)
    yield
    await app.state.service.aclose()


async def agent_a_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AgentAError)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def create_app(
    settings: GeneratorSettings | None = None, common: CommonSettings | None = None
) -> FastAPI:
    app = FastAPI(title="gvloop generator (agent A)", version="1", lifespan=lifespan)
    app.state.settings = settings or GeneratorSettings()
    app.state.common = common or CommonSettings()
    install_common(app, app.state.settings.max_body_bytes)
    app.add_exception_handler(AgentAError, agent_a_error)
    app.include_router(router)
    app.include_router(public)
    return app
