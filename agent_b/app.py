"""The verifier's FastAPI app: `create_app(settings)`; the judge loads in the background so
/health can answer 503 until it is ready."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from agent_b.judge import JudgeUnavailableError
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


async def judge_unavailable(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "5"})


async def invalid_request(_: Request, exc: Exception) -> Response:
    # FastAPI's own handler echoes the input as UTF-8 and fails (500) on a lone surrogate
    # ("\\ud800"), which pydantic rightly refuses; ASCII JSON escapes it instead.
    errors = jsonable_encoder(exc.errors() if isinstance(exc, RequestValidationError) else [])
    body = json.dumps({"detail": errors}, ensure_ascii=True)
    return Response(body, status_code=422, media_type="application/json")


def create_app(settings: VerifierSettings | None = None) -> FastAPI:
    settings = settings or VerifierSettings()
    app = FastAPI(title="gvloop verifier (agent B)", version="1", lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = metrics = VerifierMetrics()
    install_common(app, settings.max_body_bytes)
    app.add_exception_handler(JudgeUnavailableError, judge_unavailable)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.include_router(router)
    routes = frozenset(getattr(route, "path", "") for route in app.routes)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=routes)
    return app
