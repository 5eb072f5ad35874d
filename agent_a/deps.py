"""Dependencies of the generator's routes: settings, the running service, metrics, the token
check."""

from typing import Annotated

from fastapi import Depends, Request

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


def require_token(credentials: BearerCredentials, settings: SettingsDep) -> None:
    check_bearer(credentials, settings.api_token)
