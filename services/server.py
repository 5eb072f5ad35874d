"""What every gvloop HTTP API shares: bearer-token auth, a request body limit, and turning
hostile JSON into a 4xx instead of a 500."""

from __future__ import annotations

import json
import secrets
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

bearer_scheme = HTTPBearer(auto_error=False, description="Required when the service has a token.")
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]


def check_bearer(credentials: HTTPAuthorizationCredentials | None, expected: str | None) -> None:
    """401 unless `expected` is unset or the request carries exactly that bearer token."""
    if expected is None:
        return
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing bearer token: send 'Authorization: Bearer <token>'",
            headers=challenge,
        )
    if not secrets.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid bearer token", headers=challenge)


class BodySizeLimit:
    """413 for bodies over `max_bytes`, checked on the declared length and on the bytes read,
    so a chunked upload without Content-Length cannot get past it either. The body is read
    here (it is small by construction) and replayed to the app."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._reject(scope, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._reject(scope, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, send: Send) -> None:
        response = JSONResponse(
            {"detail": f"request body over the limit of {self.max_bytes} bytes"},
            status_code=status.HTTP_413_CONTENT_TOO_LARGE,
        )
        await response(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


class APIError(Exception):
    """An error a service answers with its own HTTP status: the domain modules raise subclasses
    (each sets `status_code`), the handler `install_common` adds turns them into
    `{"detail": ...}` responses."""

    status_code = 500

    def __init__(self, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers


def install_common(app: FastAPI, max_body_bytes: int) -> None:
    """Body limit, each APIError as its status, and 4xx for JSON the parser cannot hold (deep
    nesting, bad encodings) or that fails validation in ways FastAPI's own handler cannot
    report (lone surrogates)."""
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)

    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(
            {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RecursionError)
    async def too_deep(_: Request, __: RecursionError) -> JSONResponse:
        return JSONResponse({"detail": "JSON nested too deeply"}, status_code=422)

    @app.exception_handler(UnicodeDecodeError)
    async def not_utf8(_: Request, __: UnicodeDecodeError) -> JSONResponse:
        return JSONResponse({"detail": "request body is not valid UTF-8"}, status_code=400)

    @app.exception_handler(json.JSONDecodeError)
    async def not_json(_: Request, exc: json.JSONDecodeError) -> JSONResponse:
        return JSONResponse({"detail": f"invalid JSON: {exc.msg}"}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> Response:
        # FastAPI's own handler echoes the input as UTF-8 and fails (500) on a lone surrogate
        # ("\ud800"), which pydantic rightly refuses; ASCII JSON escapes it instead.
        body = json.dumps({"detail": jsonable_encoder(exc.errors())}, ensure_ascii=True)
        return Response(body, status_code=422, media_type="application/json")
