"""A stand-in for agent A's POST /weights, served over real HTTP by the tests (agent A's own
tests cover the real swap): it records each request and answers like agent A."""

from __future__ import annotations

from fastapi import FastAPI, HTTPException

from services.schemas import SwapRequest, SwapResponse, SwapTimings
from services.server import BearerCredentials, check_bearer


def swap_recorder(
    calls: list[SwapRequest], fail_with: list[int] | None = None, token: str | None = None
) -> FastAPI:
    """POST /weights that appends each request to `calls`; answers the HTTP statuses in
    `fail_with` first, one per request, then success."""
    app = FastAPI()
    failures = list(fail_with or [])

    @app.post("/weights")
    async def update_weights(body: SwapRequest, credentials: BearerCredentials) -> SwapResponse:
        check_bearer(credentials, token)
        calls.append(body)
        if failures:
            raise HTTPException(failures.pop(0), "not now")
        timings = SwapTimings(
            pause_s=0.01, reload_s=0.02, resume_s=0.01, total_s=0.04, stopped_s=0.04
        )
        return SwapResponse(
            version=body.version, checkpoint_dir=body.checkpoint_dir, engines=1, timings=timings
        )

    return app
