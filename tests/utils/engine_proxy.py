"""A reverse proxy in front of one vLLM engine that lets a test hold or fail the engine calls it
names, at exactly the step of a hot swap it wants to break: agent A is pointed at the proxy
instead of the engine and cannot tell the difference. It forwards everything else, streamed
responses included, unchanged.

It runs on real HTTP in a thread of the test process (`serve_app`); the test steers it from its
own event loop, so the handshakes between them are thread-safe events."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.utils.serve import serve_app

HOP_BY_HOP = {"connection", "content-length", "transfer-encoding", "keep-alive", "host"}


@dataclass
class Fault:
    """What happens to the calls that match: `path` (and, for /collective_rpc, the worker
    method named in the body). Held calls wait for `release()`; failed ones get `status`."""

    path: str
    method: str | None = None
    hold: bool = False
    status: int | None = None
    times: int = 1
    """How many matching calls it applies to."""
    seen: int = 0
    held: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)

    def matches(self, path: str, body: bytes) -> bool:
        if self.seen >= self.times or path != self.path:
            return False
        if self.method is None:
            return True
        try:
            return json.loads(body).get("method") == self.method
        except (ValueError, AttributeError):
            return False

    async def wait_held(self, timeout_s: float = 120) -> None:
        """Until a matching call is being held (fails the test after `timeout_s`)."""
        if not await asyncio.to_thread(self.held.wait, timeout_s):
            raise AssertionError(f"no {self.method or self.path} call came in {timeout_s}s")

    def release(self) -> None:
        self.released.set()


class EngineProxy:
    def __init__(self, engine_url: str) -> None:
        self.engine_url = engine_url
        self.faults: list[Fault] = []
        self.calls: list[str] = []
        """Every call's path (and worker method), in order."""
        self.app = Starlette(
            routes=[Route("/{path:path}", self._forward, methods=["GET", "POST", "DELETE"])]
        )

    def add(self, fault: Fault) -> Fault:
        self.faults.append(fault)
        return fault

    def clear(self) -> None:
        for fault in self.faults:
            fault.release()
        self.faults.clear()

    async def _forward(self, request: Request) -> Response:
        path, body = request.url.path, await request.body()
        method = json.loads(body).get("method") if path == "/collective_rpc" and body else None
        self.calls.append(f"{path} {method}" if method else path)
        for fault in self.faults:
            if fault.matches(path, body):
                fault.seen += 1
                if fault.hold:
                    fault.held.set()
                    await asyncio.to_thread(fault.released.wait)
                if fault.status is not None:
                    error = f"injected by the test proxy: {path} {method or ''}"
                    return JSONResponse({"error": error.strip()}, fault.status)
        return await self._send(request, body)

    async def _send(self, request: Request, body: bytes) -> Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        url = f"{self.engine_url}{request.url.path}"
        if request.url.query:
            url += f"?{request.url.query}"
        client = httpx.AsyncClient(timeout=600)
        try:
            upstream = await client.send(
                client.build_request(request.method, url, content=body, headers=headers),
                stream=True,
            )
        except httpx.TransportError as exc:  # the engine is gone: what agent A would see of it
            await client.aclose()
            return JSONResponse({"error": f"engine unreachable: {exc!r}"}, 502)

        async def stream() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            finally:
                await upstream.aclose()
                await client.aclose()

        kept = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
        return StreamingResponse(stream(), upstream.status_code, kept)


@contextmanager
def engine_proxy(engine_url: str) -> Iterator[tuple[EngineProxy, str]]:
    """The proxy and its URL, serving until the block ends (held calls are released then)."""
    proxy = EngineProxy(engine_url)
    try:
        with serve_app(proxy.app) as url:
            yield proxy, url
    finally:
        proxy.clear()
