"""HTTP clients for the services: a timeout on every call, retries with backoff where the call
is safe to repeat (verification and weight loading are idempotent), and errors that say which
service, where, and what to do."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TypeVar

import httpx
from pydantic import BaseModel

from services.schemas import (
    GenerateRequest,
    GenerateResponse,
    SwapRequest,
    SwapResponse,
    VerifyBatchRequest,
    VerifyBatchResponse,
    VerifyRequest,
    VerifyResponse,
    WeightInfo,
)

logger = logging.getLogger(__name__)

ResponseT = TypeVar("ResponseT", bound=BaseModel)
RETRY_STATUSES = frozenset({429, 502, 503, 504})


class ServiceUnavailableError(RuntimeError):
    """A service did not answer successfully after every retry."""


class ServiceError(RuntimeError):
    """A service answered with an error that retrying will not fix (4xx, 500)."""

    def __init__(self, what: str, status_code: int, detail: str) -> None:
        super().__init__(f"{what} answered {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


class RetryPolicy(BaseModel):
    attempts: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0

    def delay(self, attempt: int) -> float:
        """Exponential backoff with jitter, so retrying clients do not stampede together."""
        return min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1)


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


async def request_with_retry(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    what: str,
    policy: RetryPolicy,
    json: object = None,
    stream: bool = False,
) -> httpx.Response:
    """Send, retrying transport errors and 429/502/503/504; any other answer is returned.

    stream: the answer comes back with its body unread (the caller reads and closes it); only
    connecting and the status are retried, never a body already being read."""
    for attempt in range(1, policy.attempts + 1):
        try:
            request = client.build_request(method, url, json=json)
            response = await client.send(request, stream=stream)
            if response.status_code not in RETRY_STATUSES:
                return response
            await response.aread()
            await response.aclose()
            cause = f"HTTP {response.status_code}: {response.text[:200]}"
            retry_after = response.headers.get("retry-after")
        except httpx.TransportError as exc:
            cause, retry_after = f"{type(exc).__name__}: {exc}", None
        if attempt == policy.attempts:
            raise ServiceUnavailableError(
                f"{what} at {url} failed {policy.attempts} times; last: {cause}"
            )
        delay = (
            float(retry_after) if retry_after and retry_after.isdigit() else policy.delay(attempt)
        )
        logger.warning(
            "%s: %s; retry %d/%d in %.1fs", what, cause, attempt, policy.attempts - 1, delay
        )
        await asyncio.sleep(delay)
    raise AssertionError("unreachable")


def parse(response: httpx.Response, model: type[ResponseT], what: str) -> ResponseT:
    if response.is_success:
        return model.model_validate_json(response.content)
    try:
        detail = str(response.json().get("detail", response.text))
    except ValueError:
        detail = response.text
    raise ServiceError(what, response.status_code, detail[:500])


async def wait_ready(url: str, deadline_s: float, what: str, interval_s: float = 1.0) -> None:
    """Poll `url` until it answers 200; raise ServiceUnavailableError at the deadline."""
    end = time.monotonic() + deadline_s
    cause = "no answer yet"
    async with httpx.AsyncClient(timeout=min(5.0, deadline_s)) as client:
        while time.monotonic() < end:
            try:
                response = await client.get(url)
                if response.status_code == 200:
                    return
                cause = f"HTTP {response.status_code}"
            except httpx.TransportError as exc:
                cause = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(interval_s)
    raise ServiceUnavailableError(f"{what} not ready at {url} after {deadline_s:.0f}s: {cause}")


class _ServiceClient:
    what = "service"

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout_s: float = 60.0,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.policy = policy or RetryPolicy()
        self.http = httpx.AsyncClient(
            base_url=self.base_url, headers=bearer(token), timeout=timeout_s
        )

    async def _call(
        self, method: str, path: str, model: type[ResponseT], body: BaseModel | None = None
    ) -> ResponseT:
        response = await request_with_retry(
            self.http,
            method,
            path,
            what=self.what,
            policy=self.policy,
            json=body.model_dump(mode="json") if body is not None else None,
        )
        return parse(response, model, self.what)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class VerifierClient(_ServiceClient):
    what = "verifier (agent B)"

    async def verify(self, request: VerifyRequest) -> VerifyResponse:
        return await self._call("POST", "/verify", VerifyResponse, request)

    async def verify_batch(self, request: VerifyBatchRequest) -> VerifyBatchResponse:
        return await self._call("POST", "/verify/batch", VerifyBatchResponse, request)


class GeneratorClient(_ServiceClient):
    what = "generator (agent A)"

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        return await self._call("POST", "/problems", GenerateResponse, request)

    async def swap(self, request: SwapRequest) -> SwapResponse:
        return await self._call("POST", "/weights", SwapResponse, request)

    async def weights(self) -> WeightInfo:
        return await self._call("GET", "/weights", WeightInfo)
