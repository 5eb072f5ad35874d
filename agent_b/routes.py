"""The verifier API: POST /verify, POST /verify/batch, POST /get_reward (OpenRLHF), GET /health,
GET /metrics."""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter, Depends, status
from fastapi.responses import JSONResponse, Response

from agent_b.deps import MetricsDep, SettingsDep, VerifierDep, require_token
from agent_b.metrics import VerifierMetrics
from agent_b.rewards import openrlhf_requests, openrlhf_response
from agent_b.scoring import Verifier
from services.processes import instance_id
from services.schemas import (
    RewardRequest,
    RewardResponse,
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
    data = await verify_many(body.items, verifier, metrics)
    return VerifyBatchResponse(data=data, count=len(data))


@router.post(
    "/get_reward",
    dependencies=[Depends(require_token)],
    responses=UNAVAILABLE,
    summary="OpenRLHF's remote reward model: rewards for prompt + response queries",
)
async def get_reward(
    body: RewardRequest, verifier: VerifierDep, metrics: MetricsDep, settings: SettingsDep
) -> RewardResponse:
    """rewards: GVLOOP_VERIFIER_REWARD_FIELD (default S, the combined score); scores: is_correct
    as 0/1; extra_logs: the verdicts' numbers. Scored like /verify/batch."""
    data = await verify_many(openrlhf_requests(body), verifier, metrics)
    return openrlhf_response(data, settings.reward_field)


async def verify_many(
    items: list[VerifyRequest], verifier: Verifier, metrics: VerifierMetrics
) -> list[VerifyResponse]:
    """A batch of either route, scored concurrently, counted and logged once."""
    started = time.perf_counter()
    metrics.batch_items.observe(len(items))
    data = await verifier.verify_many(items)
    logger.info(
        "verified a batch of %d in %.2fs: %d correct, mean score %.2f",
        len(data),
        time.perf_counter() - started,
        sum(r.is_correct for r in data),
        sum(r.combined for r in data) / len(data),
    )
    return data


@router.get("/health", summary="200 once the judge is loaded, 503 before (or if it failed)")
async def read_health(verifier: VerifierDep) -> JSONResponse:
    model = verifier.judge.name
    if verifier.judge.ready:
        # instance: the id `gvloop up` started this process with, so it knows its own child
        return JSONResponse({"status": "ok", "model": model, "instance": instance_id()})
    state = "failed" if verifier.load_error else "loading"
    detail = verifier.load_error or "the judge model is loading"
    return JSONResponse(
        {"status": state, "model": model, "detail": detail, "instance": instance_id()},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
    )


@router.get("/metrics", summary="Prometheus metrics")
async def read_metrics(metrics: MetricsDep) -> Response:
    return Response(metrics.render(), media_type=metrics.content_type)
