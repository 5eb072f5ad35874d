"""The generator API: POST /problems, GET /jobs/{id}, GET /weights (the client's bearer token
when configured), POST /weights (the operator's, when configured); GET /health and GET /metrics
(open, for orchestrators and scrapers)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Response, status
from prometheus_client import CONTENT_TYPE_LATEST

from agent_a.deps import MetricsDep, ServiceDep, require_operator, require_token
from agent_a.errors import AgentAError
from agent_a.service import HealthResponse
from services.schemas import (
    GenerateRequest,
    GenerateResponse,
    JobStatus,
    SwapRequest,
    SwapResponse,
    WeightInfo,
)

router = APIRouter(dependencies=[Depends(require_token)], tags=["generator"])
public = APIRouter(tags=["operations"])

UNAVAILABLE = {503: {"description": "An engine, the verifier or Redis is down (after retries)."}}


@router.post(
    "/problems",
    responses={
        202: {"model": JobStatus, "description": "wait=false: the job, to poll at /jobs/{id}."},
        422: {"description": "Invalid, or over a limit (the detail says which)."},
        429: {"description": "The sample queue is full: retry after Retry-After seconds."},
        **UNAVAILABLE,
    },
    summary="Generate, verify and queue solutions",
)
async def create_solutions(
    body: GenerateRequest, service: ServiceDep, metrics: MetricsDep, response: Response
) -> GenerateResponse | JobStatus:
    """n samples per problem through the engines, each scored by the verifier and appended to
    the training queue; the solutions come back with their feedback."""
    try:
        await service.generator.admit(body)
        if not body.wait:
            job = await service.jobs.submit(body)
            response.status_code = status.HTTP_202_ACCEPTED
            metrics.requests.labels("job").inc()
            return job
        result = await service.generator.generate(body)
    except AgentAError as exc:
        metrics.requests.labels(str(exc.status_code)).inc()
        raise
    metrics.requests.labels("ok").inc()
    return result


@router.get("/jobs/{job_id}", responses={404: {"description": "Unknown or expired job."}})
async def read_job(
    job_id: Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[0-9a-f]+$")],
    service: ServiceDep,
) -> JobStatus:
    """A job's state; its result once done, its error if failed."""
    return await service.jobs.store.get(job_id)


@router.post(
    "/weights",
    dependencies=[Depends(require_operator)],
    responses={
        403: {
            "description": "A client token (not the operator's), or checkpoint_dir resolves "
            "outside the checkpoint root."
        },
        422: {"description": "Not a complete checkpoint of the served model."},
        502: {"description": "An engine failed to load it; all engines recovered."},
        503: {"description": "An engine could not recover, or none answers."},
    },
    summary="Hot-swap the engines' weights",
)
async def update_weights(body: SwapRequest, service: ServiceDep) -> SwapResponse:
    """Stage the checkpoint on every engine while they serve, then pause them (in-flight
    requests wait), flip it in, set the weight version, reset the prefix cache, resume; returns
    each phase's time."""
    return await service.swap(body)


@router.get("/weights")
async def read_weights(service: ServiceDep) -> WeightInfo:
    """The weight version being served, and the checkpoint it came from (null: the base)."""
    return service.swapper.weights


@public.get("/health", responses={503: {"model": HealthResponse}})
async def read_health(service: ServiceDep, response: Response) -> HealthResponse:
    """200 while at least one engine serves and Redis answers, else 503."""
    health = await service.health()
    if health.status == "unavailable":
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return health


@public.get("/metrics", response_class=Response)
async def read_metrics(metrics: MetricsDep) -> Response:
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
