"""The launcher's recovery paths with real processes and real HTTP: a component deaf to SIGTERM
is killed once its grace has passed, and the launcher says so; a health URL that answers
non-200 is not taken for ready (it is polled again, and a timeout names the status); one that
answers 200 without the JSON the child's identity is read from is refused as foreign."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gvloop.launcher import (
    Component,
    ComponentNotReadyError,
    ForeignServiceError,
    Launcher,
    free_ports,
)
from tests.integration.gvloop.test_launcher import alive
from tests.utils.waits import wait_until

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
GRACE_S = 1


@contextmanager
def health_server(status: int, body: bytes, content_type: str) -> Iterator[tuple[str, list[str]]]:
    """A server in a thread of the test process answering every GET with `status` and `body`;
    yields its /health URL and the paths it was asked for."""
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/health", asked
    finally:
        server.shutdown()
        server.server_close()


def test_a_component_deaf_to_sigterm_is_killed_after_its_grace(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # it ignores SIGTERM, and so does the child it starts in its process group
    pid_file = tmp_path / "grandchild.pid"
    deaf = f"""
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open({str(pid_file)!r}, "w").write(str(child.pid))
print("deaf to SIGTERM", flush=True)
time.sleep(600)
"""
    launcher = Launcher(tmp_path, echo=False)
    launcher.start(Component("polite", SLEEPER, stop_timeout_s=600))
    launcher.start(Component("deaf", [sys.executable, "-c", deaf], stop_timeout_s=GRACE_S))
    polite, deaf_run = (run.process for run in launcher.running)
    wait_until(lambda: "deaf to SIGTERM" in launcher.running[1].tail, "the component set up")
    grandchild = int(pid_file.read_text())

    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="gvloop.launcher"):
        launcher.stop_all()
    assert polite.returncode == -signal.SIGTERM  # stopped by the request, as asked
    assert deaf_run.returncode == -signal.SIGKILL  # killed, but not before its grace
    assert time.monotonic() - started >= GRACE_S
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"deaf ignored SIGTERM for {GRACE_S}s: killing it"]
    wait_until(lambda: not alive(grandchild), "the deaf component's own child gone")


def test_a_health_url_answering_non_200_is_not_ready_and_its_timeout_names_the_status(
    tmp_path: Path,
) -> None:
    told: list[tuple[str, str]] = []
    with (
        health_server(503, b'{"status": "loading"}', "application/json") as (url, asked),
        Launcher(tmp_path, echo=False, on_state=lambda *event: told.append(event)) as launcher,
    ):
        launcher.start(Component("web", SLEEPER, health_url=url, ready_timeout_s=3))
        with pytest.raises(ComponentNotReadyError) as not_ready:
            launcher.wait_ready()
    assert str(not_ready.value) == (
        f"web not healthy at {url} after 3s (HTTP 503); see {tmp_path / 'web'}.log"
    )
    assert len(asked) >= 2 and set(asked) == {"/health"}  # asked again, not given up on
    assert told == [("web", "starting")]  # never announced ready


def test_a_component_answering_503_while_it_loads_is_ready_once_it_answers_200(
    tmp_path: Path,
) -> None:
    port = free_ports(1)[0]
    loading = f"""
import http.server, json, os
answers = iter([503, 503])
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        status = next(answers, 200)
        body = json.dumps({{"instance": os.environ["GVLOOP_INSTANCE_ID"]}}).encode()
        print("answered", status, flush=True)
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", {port}), Handler).serve_forever()
"""
    told: list[tuple[str, str]] = []
    with Launcher(tmp_path, echo=False, on_state=lambda *event: told.append(event)) as launcher:
        launcher.start(
            Component(
                "web",
                [sys.executable, "-c", loading],
                health_url=f"http://127.0.0.1:{port}/health",
                identity="instance",
            )
        )
        launcher.wait_ready()
        told_ready = list(told)

        def answered() -> list[str]:
            return [line for line in launcher.running[0].tail if line.startswith("answered")]

        # the child's line about its last answer may reach the log after the answer itself
        wait_until(lambda: len(answered()) >= 3, "the child's three answers logged")
        assert answered() == ["answered 503", "answered 503", "answered 200"]
    assert told_ready == [("web", "starting"), ("web", "ready")]


@pytest.mark.parametrize(
    ("body", "content_type"),
    [(b"OK", "text/plain"), (b'["ok"]', "application/json")],
    ids=["not-json", "json-but-no-object"],
)
def test_a_200_without_the_instance_json_is_refused_as_foreign(
    tmp_path: Path, body: bytes, content_type: str
) -> None:
    with (
        health_server(200, body, content_type) as (url, _),
        Launcher(tmp_path, echo=False) as launcher,
    ):
        launcher.start(Component("web", SLEEPER, health_url=url, identity="instance"))
        instance = launcher.running[0].instance
        with pytest.raises(ForeignServiceError) as refused:
            launcher.wait_ready()
    message = str(refused.value)
    assert message.startswith(f"web: {url} answers, but from another server")
    assert f"(instance None, not {instance})" in message
    # the server is this test's: the launcher names its pid
    assert f"in use by pid {os.getpid()}" in message
