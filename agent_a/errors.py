"""Agent A's errors, each with the HTTP status its API answers it with: `services.server`'s
APIError handler turns them into `{"detail": ...}` responses, the same for every service."""

from __future__ import annotations

from services.server import APIError


class AgentAError(APIError):
    """Every error of Agent A's API."""


class InvalidRequestError(AgentAError):
    """A request the API cannot serve as asked (over a limit, contradictory options)."""

    status_code = 422


class CheckpointRejectedError(AgentAError):
    """A swap target that is not a loadable checkpoint of the served model."""

    status_code = 422


class CheckpointOutsideRootError(AgentAError):
    status_code = 403


class QueueBusyError(AgentAError):
    """Backpressure: the sample queue (or the job runner) is full; retry later."""

    status_code = 429

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after_s)})


class DependencyUnavailableError(AgentAError):
    """An engine, the verifier or Redis did not answer, after retries."""

    status_code = 503


class DependencyFailedError(AgentAError):
    """An engine or the verifier answered with an error that retrying would not fix."""

    status_code = 502


class JobNotFoundError(AgentAError):
    status_code = 404


class ModelNotFoundError(AgentAError):
    """An OpenAI request for a model these engines do not serve."""

    status_code = 404
