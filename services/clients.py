"""HTTP clients for the services: a timeout on every call, retries with backoff where the call
is safe to repeat (verification and weight loading are idempotent), and errors that say which
service, where, and what to do."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx
from pydantic import BaseModel
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_never,
)

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
T = TypeVar("T")
RETRY_STATUSES = frozenset({429, 502, 503, 504})


class ServiceUnavailableError(RuntimeError):
    """A service did not answer successfully after every retry."""


class ServiceError(RuntimeError):
    """A service answered with an error that retrying will not fix (4xx, 500)."""

    def __init__(self, what: str, status_code: int, detail: str) -> None:
        super().__init__(f"{what} answered {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


class RetryableError(RuntimeError):
    """A failure worth another try; `retry_after`: the seconds the service asked for."""

    def __init__(self, cause: str, retry_after: str | None = None) -> None:
        super().__init__(cause)
        self.retry_after = retry_after


class RetryPolicy(BaseModel):
    attempts: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0

    def delay(self, attempt: int) -> float:
        """Exponential backoff with jitter, so retrying clients do not stampede together."""
        return min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1)

    async def call(
        self,
        fn: Callable[[], Awaitable[T]],
        retry_if: Callable[[BaseException], bool],
        on_retry: Callable[[BaseException, int, float], None],
        forever: bool = False,
    ) -> T:
        """`fn()`, tried again after each failure `retry_if` accepts (after `delay`, or the
        Retry-After a service asked for), `attempts` times at most unless `forever`; the last
        failure is raised as it was. `on_retry(failure, attempt, seconds)` says each retry."""

        def wait(state: RetryCallState) -> float:
            failure = state.outcome.exception() if state.outcome else None
            after = getattr(failure, "retry_after", None)
            return float(after) if after and after.isdigit() else self.delay(state.attempt_number)

        def before_sleep(state: RetryCallState) -> None:
            assert state.outcome is not None and state.next_action is not None
            on_retry(state.outcome.exception(), state.attempt_number, state.next_action.sleep)

        retrying = AsyncRetrying(
            retry=retry_if_exception(retry_if),
            stop=stop_never if forever else stop_after_attempt(self.attempts),
            wait=wait,
            before_sleep=before_sleep,
            reraise=True,
        )
        return await retrying(fn)


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

    async def send() -> httpx.Response:
        try:
            response = await client.send(
                client.build_request(method, url, json=json), stream=stream
            )
        except httpx.TransportError as exc:
            raise RetryableError(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code not in RETRY_STATUSES:
            return response
        await response.aread()
        await response.aclose()
        cause = f"HTTP {response.status_code}: {response.text[:200]}"
        raise RetryableError(cause, response.headers.get("retry-after"))

    def on_retry(failure: BaseException, attempt: int, delay: float) -> None:
        logger.warning(
            "%s: %s; retry %d/%d in %.1fs", what, failure, attempt, policy.attempts - 1, delay
        )

    try:
        return await policy.call(send, lambda e: isinstance(e, RetryableError), on_retry)
    except RetryableError as exc:
        raise ServiceUnavailableError(
            f"{what} at {url} failed {policy.attempts} times; last: {exc}"
        ) from exc


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
