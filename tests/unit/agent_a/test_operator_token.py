"""Who may swap weights, through the generator app and FastAPI's test client: POST /weights
takes the operator's token, a client's gets 403. The app runs without its lifespan (no engine):
a request that passes the token checks then fails on its empty body with 422, so 422 here
means "let in" and 401/403 mean "refused at the door"."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from agent_a.app import create_app
from agent_a.deps import get_service
from agent_a.settings import GeneratorSettings
from services.settings import CommonSettings

CLIENT, OPERATOR = "client-secret", "operator-secret"
LET_IN = 422


def client_for(api_token: str | None, operator_token: str | None) -> TestClient:
    settings = GeneratorSettings(
        _env_file=None,  # type: ignore[call-arg]
        api_token=api_token,
        operator_token=operator_token,
    )
    app = create_app(settings, CommonSettings(_env_file=None))  # type: ignore[call-arg]
    # no service runs: a request let in stops at the body check, before it would need one
    app.dependency_overrides[get_service] = lambda: None
    return TestClient(app)


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


@pytest.mark.parametrize(
    ("api_token", "operator_token", "sent", "path", "status"),
    [
        # both tokens set: only the operator's swaps
        (CLIENT, OPERATOR, CLIENT, "/weights", 403),
        (CLIENT, OPERATOR, OPERATOR, "/weights", LET_IN),
        (CLIENT, OPERATOR, None, "/weights", 401),
        (CLIENT, OPERATOR, "wrong", "/weights", 401),
        # the operator's token opens the client's routes too; the client's still does
        (CLIENT, OPERATOR, OPERATOR, "/problems", LET_IN),
        (CLIENT, OPERATOR, CLIENT, "/problems", LET_IN),
        (CLIENT, OPERATOR, "wrong", "/problems", 401),
        # no operator token: the client token guards swaps, as before
        (CLIENT, None, CLIENT, "/weights", LET_IN),
        (CLIENT, None, None, "/weights", 401),
        # an operator token alone: swaps need it, the client routes stay open
        (None, OPERATOR, None, "/weights", 401),
        (None, OPERATOR, "wrong", "/weights", 401),
        (None, OPERATOR, OPERATOR, "/weights", LET_IN),
        (None, OPERATOR, None, "/problems", LET_IN),
    ],
)
def test_who_may_post(
    api_token: str | None, operator_token: str | None, sent: str | None, path: str, status: int
) -> None:
    response = client_for(api_token, operator_token).post(path, json={}, headers=bearer(sent))
    assert response.status_code == status, response.text


def test_client_token_on_weights_says_which_token_swaps() -> None:
    response = client_for(CLIENT, OPERATOR).post("/weights", json={}, headers=bearer(CLIENT))
    assert response.status_code == 403
    assert "GVLOOP_GENERATOR_OPERATOR_TOKEN" in response.json()["detail"]


@pytest.mark.parametrize(
    ("api_token", "operator_token"),
    [
        (CLIENT, CLIENT),  # the same secret: a client could swap
        (None, "changeme"),  # a placeholder secret
    ],
)
def test_unsafe_operator_tokens_are_refused(api_token: str | None, operator_token: str) -> None:
    with pytest.raises(ValidationError, match="operator_token"):
        GeneratorSettings(
            _env_file=None,  # type: ignore[call-arg]
            api_token=api_token,
            operator_token=operator_token,
        )
