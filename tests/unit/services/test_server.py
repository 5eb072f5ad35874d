"""The shared HTTP pieces through FastAPI's test client: auth, body limit, hostile JSON."""

from __future__ import annotations

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from services.schemas import VerifyRequest
from services.server import BearerCredentials, check_bearer, install_common


def make_app(token: str | None) -> FastAPI:
    def auth(credentials: BearerCredentials) -> None:
        check_bearer(credentials, token)

    app = FastAPI(dependencies=[Depends(auth)])
    install_common(app, max_body_bytes=1000)

    @app.post("/echo")
    async def echo(body: VerifyRequest) -> VerifyRequest:
        return body

    return app


BODY = {"problem": "1+1?", "solution": "2"}


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, 401),  # no token
        ({"Authorization": "Bearer wrong"}, 401),
        ({"Authorization": "Basic c2VjcmV0"}, 401),  # wrong scheme
        ({"Authorization": "Bearer secret"}, 200),
    ],
)
def test_bearer_token_is_required_when_configured(headers: dict[str, str], code: int) -> None:
    response = TestClient(make_app("secret")).post("/echo", json=BODY, headers=headers)
    assert response.status_code == code
    if code == 401:
        assert "token" in response.json()["detail"] or "Not authenticated" in response.text


def test_no_token_configured_means_open() -> None:
    assert TestClient(make_app(None)).post("/echo", json=BODY).status_code == 200


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"x" * 5000, 413),  # over the body limit
        (b"[" * 900 + b"]" * 90, 422),  # nested, under the limit, not a valid body
        (b'{"problem": "\xff\xfe", "solution": "2"}', 400),  # not UTF-8
        (b"{not json", 422),
    ],
)
def test_hostile_bodies_get_4xx(content: bytes, code: int) -> None:
    response = TestClient(make_app(None)).post(
        "/echo", content=content, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == code, response.text
    assert response.json()["detail"]


def test_chunked_body_over_limit_is_413() -> None:
    def chunks():  # no Content-Length: the limit is enforced on the bytes read
        for _ in range(10):
            yield b"x" * 200

    response = TestClient(make_app(None)).post(
        "/echo", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
