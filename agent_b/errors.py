"""Agent B's errors, each with the HTTP status its API answers it with: `services.server`'s
APIError handler turns them into `{"detail": ...}` responses, the same for every service."""

from __future__ import annotations

from services.server import APIError


class VerifierError(APIError):
    """Every error of Agent B's API."""


class JudgeUnavailableError(VerifierError):
    """The judge cannot answer now (loading, failed, overloaded, timed out): retry later."""

    status_code = 503

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": "5"})
