"""The generator API's FastAPI app: `create_app(settings)`. Start-up waits for the engines and
opens the queue; shutdown cancels running jobs and closes every client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from agent_a import openai_routes
from agent_a.metrics import GeneratorMetrics
from agent_a.routes import public, router
from agent_a.service import GeneratorService
from agent_a.settings import GeneratorSettings
from services.server import install_common
from services.settings import CommonSettings


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.service = await GeneratorService.start(
        app.state.settings, app.state.common, app.state.metrics
    )
    yield
    await app.state.service.aclose()


def create_app(
    settings: GeneratorSettings | None = None, common: CommonSettings | None = None
) -> FastAPI:
    app = FastAPI(title="gvloop generator (agent A)", version="1", lifespan=lifespan)
    app.state.settings = settings or GeneratorSettings()
    app.state.common = common or CommonSettings()
    app.state.metrics = GeneratorMetrics()
    install_common(app, app.state.settings.max_body_bytes)
    app.include_router(router)
    app.include_router(openai_routes.router)
    app.include_router(public)
    return app
