"""Serve an ASGI app over real HTTP on a free loopback port, in a thread of the test process,
with its lifespan run by uvicorn exactly as in production."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn
from starlette.types import ASGIApp

from gvloop.launcher import free_ports


@contextmanager
def serve_app(
    app: ASGIApp, ready_path: str | None = None, timeout_s: float = 120, port: int | None = None
) -> Iterator[str]:
    """Yield the base URL once the server is up (and `ready_path` answers 200, if given), on
    `port` or a free one."""
    port = port or free_ports(1)[0]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn:{port}", daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    try:
        while not server.started:
            assert thread.is_alive(), "the server thread died while starting"
            assert time.monotonic() < deadline, f"server not started in {timeout_s}s"
            time.sleep(0.05)
        if ready_path is not None:
            while httpx.get(base_url + ready_path, timeout=5).status_code != 200:
                assert time.monotonic() < deadline, f"{ready_path} not 200 in {timeout_s}s"
                time.sleep(0.2)
        yield base_url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
