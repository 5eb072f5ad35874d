"""The local launcher with real child processes: health waits, prefixed logs, deaths reported,
every process group stopped, children gone with a killed launcher, foreign servers refused."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest

from gvloop.launcher import (
    Component,
    ComponentDiedError,
    ComponentNotReadyError,
    ForeignServiceError,
    Launcher,
    free_ports,
)
from services.processes import port_holders
from tests.utils.waits import wait_until


def http_server(port: int) -> list[str]:
    return [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]


def instance_server(port: int, instance: str = "os.environ['GVLOOP_INSTANCE_ID']") -> list[str]:
    """A server answering every GET with {"instance": <the expression `instance`>}."""
    script = f"""
import http.server, json, os
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({{"instance": {instance}}}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(("127.0.0.1", {port}), Handler).serve_forever()
"""
    return [sys.executable, "-c", script]


@pytest.fixture
def foreign() -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """Another program's server, not the launcher's child, answering 200 with a JSON body."""
    port = free_ports(1)[0]
    server = subprocess.Popen(instance_server(port, "'someone-else'"))
    deadline = time.monotonic() + 30
    while not port_holders(port):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    yield port, server
    server.kill()
    server.wait()


def test_waits_for_health_and_logs_with_prefix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_ports(1)[0]
    with Launcher(tmp_path) as launcher:
        launcher.start(Component("web", http_server(port), health_url=f"http://127.0.0.1:{port}/"))
        launcher.start(
            Component("hello", [sys.executable, "-c", "print('hi'); import time; time.sleep(60)"])
        )
        launcher.wait_ready()
        launcher.check()
        echoed: list[str] = []
        wait_until(
            lambda: echoed.append(capsys.readouterr().out) or "hello | hi" in "".join(echoed),
            "the component's line echoed",
        )
    assert (tmp_path / "hello.log").read_text() == "hi\n"


def test_a_dead_component_is_named_with_its_last_lines(tmp_path: Path) -> None:
    with Launcher(tmp_path, echo=False) as launcher:
        launcher.start(
            Component(
                "crasher",
                [sys.executable, "-c", "print('bad config'); exit(3)"],
                health_url=f"http://127.0.0.1:{free_ports(1)[0]}/",
            )
        )
        with pytest.raises(
            ComponentDiedError, match=r"crasher exited with code 3(.|\n)*bad config"
        ):
            launcher.wait_ready()


def test_health_timeout_says_where_to_look(tmp_path: Path) -> None:
    with Launcher(tmp_path, echo=False) as launcher:
        launcher.start(
            Component(
                "silent",
                [sys.executable, "-c", "import time; time.sleep(60)"],
                health_url=f"http://127.0.0.1:{free_ports(1)[0]}/",
                ready_timeout_s=2,
            )
        )
        with pytest.raises(ComponentNotReadyError, match=r"silent\.log"):
            launcher.wait_ready()


def test_stop_all_stops_grandchildren(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys, time; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
        f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(120)"
    )
    launcher = Launcher(tmp_path, echo=False)
    launcher.start(Component("parent", [sys.executable, "-c", script], stop_timeout_s=5))
    deadline = time.monotonic() + 20
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    grandchild = int(pid_file.read_text())
    launcher.stop_all()
    wait_until(lambda: not alive(grandchild), "the grandchild gone")


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting for a reaper that is not us."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.parametrize("identity", ["listener", "instance"])
def test_a_foreign_server_on_the_health_port_is_refused(
    tmp_path: Path,
    foreign: tuple[int, subprocess.Popen[bytes]],
    identity: Literal["listener", "instance"],
) -> None:
    port, server = foreign
    with Launcher(tmp_path, echo=False) as launcher:
        launcher.start(
            Component(
                "web",
                [sys.executable, "-c", "import time; time.sleep(60)"],
                health_url=f"http://127.0.0.1:{port}/health",
                identity=identity,
            )
        )
        with pytest.raises(ForeignServiceError) as refused:
            launcher.wait_ready()
    message = str(refused.value)
    assert message.startswith(f"web: http://127.0.0.1:{port}/health answers, but from another")
    assert f"port {port} is in use by pid {server.pid}" in message
    assert f"kill {server.pid}" in message


def test_the_instance_id_proves_the_child(tmp_path: Path) -> None:
    port = free_ports(1)[0]
    with Launcher(tmp_path, echo=False) as launcher:
        launcher.start(
            Component(
                "web",
                instance_server(port),
                health_url=f"http://127.0.0.1:{port}/health",
                identity="instance",
            )
        )
        launcher.wait_ready()


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's")
def test_children_die_with_a_killed_launcher(tmp_path: Path) -> None:
    script = f"""
import sys, time
from pathlib import Path
from gvloop.launcher import Component, Launcher
launcher = Launcher(Path({str(tmp_path)!r}), echo=False)
launcher.start(Component("sleeper", [sys.executable, "-c", "import time; time.sleep(120)"]))
print(launcher.running[0].process.pid, flush=True)
time.sleep(120)
"""
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 5
    while alive(child):
        assert time.monotonic() < deadline, "the child outlived its launcher"
        time.sleep(0.1)


def test_each_component_is_announced_ready_once(tmp_path: Path) -> None:
    # wait_ready runs after every start, over every component started so far
    port = free_ports(1)[0]
    told: list[tuple[str, str]] = []
    with Launcher(tmp_path, echo=False, on_state=lambda *event: told.append(event)) as launcher:
        launcher.start(Component("web", http_server(port), health_url=f"http://127.0.0.1:{port}/"))
        launcher.wait_ready()
        launcher.start(Component("idle", [sys.executable, "-c", "import time; time.sleep(60)"]))
        launcher.wait_ready()
        launcher.wait_ready()
    assert told == [("web", "starting"), ("web", "ready"), ("idle", "starting"), ("idle", "ready")]


@pytest.mark.parametrize(("code", "finished"), [(0, True), (3, False)])
def test_a_component_that_may_finish_is_done_at_status_0_only(
    tmp_path: Path, code: int, finished: bool
) -> None:
    states: list[tuple[str, str]] = []
    on_state = lambda name, state: states.append((name, state))  # noqa: E731
    with Launcher(tmp_path, echo=False, on_state=on_state) as launcher:
        command = [sys.executable, "-c", f"print('step 10 of 10'); exit({code})"]
        launcher.start(Component("trainer", command, may_finish=True))
        launcher.running[0].process.wait(30)
        if finished:
            launcher.check()
            launcher.check()  # announced once
            assert launcher.finished == {"trainer"}
            assert states == [("trainer", "starting"), ("trainer", "finished")]
        else:
            with pytest.raises(ComponentDiedError, match="trainer exited with code 3"):
                launcher.check()
