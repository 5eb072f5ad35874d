"""The verifier's FastAPI app: `create_app(settings)`; the judge loads in the background so
/health can answer 503 until it is ready."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from agent_b.metrics import MetricsMiddleware, VerifierMetrics
from agent_b.routes import router
from agent_b.scoring import setup_verifier
from agent_b.settings import VerifierSettings
from services.server import install_common


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.verifier = verifier = setup_verifier(app.state.settings, app.state.metrics)
    loading = asyncio.create_task(verifier.load(), name="load-judge")
    yield
    loading.cancel()
    await verifier.aclose()


def create_app(settings: VerifierSettings | None = None) -> FastAPI:
    settings = settings or VerifierSettings()
    app = FastAPI(title="gvloop verifier (agent B)", version="1", lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = metrics = VerifierMetrics()
    install_common(app, settings.max_body_bytes)
    app.include_router(router)
    routes = frozenset(getattr(route, "path", "") for route in app.routes)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=routes)
    return app
