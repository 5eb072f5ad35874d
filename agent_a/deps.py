"""Dependencies of the generator's routes: settings, the running service, metrics, the token
checks (a client's token, and the operator's for hot swaps)."""

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials

from agent_a.metrics import GeneratorMetrics
from agent_a.service import GeneratorService
from agent_a.settings import GeneratorSettings
from services.server import BearerCredentials, check_bearer


def get_settings(request: Request) -> GeneratorSettings:
    return request.app.state.settings


def get_service(request: Request) -> GeneratorService:
    return request.app.state.service


def get_metrics(request: Request) -> GeneratorMetrics:
    return request.app.state.metrics


SettingsDep = Annotated[GeneratorSettings, Depends(get_settings)]
ServiceDep = Annotated[GeneratorService, Depends(get_service)]
MetricsDep = Annotated[GeneratorMetrics, Depends(get_metrics)]


def _is(credentials: HTTPAuthorizationCredentials | None, token: str | None) -> bool:
    return (
        credentials is not None
        and token is not None
        and secrets.compare_digest(credentials.credentials.encode(), token.encode())
    )


def require_token(credentials: BearerCredentials, settings: SettingsDep) -> None:
    """401 unless the request carries the client token (or the operator's, which opens every
    route); open when no client token is set."""
    if not _is(credentials, settings.operator_token):
        check_bearer(credentials, settings.api_token)


def require_operator(credentials: BearerCredentials, settings: SettingsDep) -> None:
    """Swapping weights is the operator's act: 403 for a client's token, 401 for none or a
    wrong one. Without an operator token, the client token guards it (`require_token`)."""
    if settings.operator_token is None or _is(credentials, settings.operator_token):
        return
    if _is(credentials, settings.api_token):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "a client token cannot swap weights: POST /weights takes the operator token "
            "(GVLOOP_GENERATOR_OPERATOR_TOKEN)",
        )
    check_bearer(credentials, settings.operator_token)
