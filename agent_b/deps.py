"""Dependencies of the verifier's routes: settings, the verifier, metrics, the token check."""

from typing import Annotated

from fastapi import Depends, Request

from agent_b.metrics import VerifierMetrics
from agent_b.scoring import Verifier
from agent_b.settings import VerifierSettings
from services.server import BearerCredentials, check_bearer


def get_settings(request: Request) -> VerifierSettings:
    return request.app.state.settings


def get_verifier(request: Request) -> Verifier:
    return request.app.state.verifier


def get_metrics(request: Request) -> VerifierMetrics:
    return request.app.state.metrics


SettingsDep = Annotated[VerifierSettings, Depends(get_settings)]
VerifierDep = Annotated[Verifier, Depends(get_verifier)]
MetricsDep = Annotated[VerifierMetrics, Depends(get_metrics)]


def require_token(credentials: BearerCredentials, settings: SettingsDep) -> None:
    check_bearer(credentials, settings.api_token)
