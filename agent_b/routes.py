"""The verifier API: POST /verify, POST /verify/batch, GET /health, GET /metrics."""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter, Depends, status
from fastapi.responses import JSONResponse, Response

from agent_b.deps import MetricsDep, VerifierDep, require_token
from services.schemas import (
    VerifyBatchRequest,
    VerifyBatchResponse,
    VerifyRequest,
    VerifyResponse,
)

logger = logging.getLogger(__name__)

UNAVAILABLE = {503: {"description": "The judge is loading, overloaded or timed out: retry."}}
router = APIRouter(tags=["verifier"])


@router.post(
    "/verify",
    dependencies=[Depends(require_token)],
    responses=UNAVAILABLE,
    summary="Score one solution",
)
async def verify_solution(body: VerifyRequest, verifier: VerifierDep) -> VerifyResponse:
    """solution_score, reasoning_score, is_correct, and how they were decided."""
    response = await verifier.verify(body)
    logger.debug(
        "verified by %s: correct=%s solution=%.2f reasoning=%.2f answer=%.40r %.0fms",
        response.decided_by,
        response.is_correct,
        response.solution_score,
        response.reasoning_score,
        response.extracted_answer,
        response.latency_ms,
    )
    return response


@router.post(
    "/verify/batch",
    dependencies=[Depends(require_token)],
    responses=UNAVAILABLE,
    summary="Score many solutions in one call",
)
async def verify_batch(
    body: VerifyBatchRequest, verifier: VerifierDep, metrics: MetricsDep
) -> VerifyBatchResponse:
    """The items are scored concurrently, so their judge questions share forward passes."""
    started = time.perf_counter()
    metrics.batch_items.observe(len(body.items))
    data = await verifier.verify_many(body.items)
    logger.info(
        "verified a batch of %d in %.2fs: %d correct, mean score %.2f",
        len(data),
        time.perf_counter() - started,
        sum(r.is_correct for r in data),
        sum(r.solution_score + r.reasoning_score for r in data) / (2 * len(data)),
    )
    return VerifyBatchResponse(data=data, count=len(data))


@router.get("/health", summary="200 once the judge is loaded, 503 before (or if it failed)")
async def read_health(verifier: VerifierDep) -> JSONResponse:
    model = verifier.judge.name
    if verifier.judge.ready:
        return JSONResponse({"status": "ok", "model": model})
    state = "failed" if verifier.load_error else "loading"
    detail = verifier.load_error or "the judge model is loading"
    return JSONResponse(
        {"status": state, "model": model, "detail": detail},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
    )


@router.get("/metrics", summary="Prometheus metrics")
async def read_metrics(metrics: MetricsDep) -> Response:
    return Response(metrics.render(), media_type=metrics.content_type)
