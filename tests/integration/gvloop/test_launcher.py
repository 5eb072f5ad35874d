"""The local launcher with real child processes: health waits, prefixed logs, deaths reported,
every process group stopped."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from gvloop.launcher import (
    Component,
    ComponentDiedError,
    ComponentNotReadyError,
    Launcher,
    free_ports,
)


def http_server(port: int) -> list[str]:
    return [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]


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
        time.sleep(0.5)
    assert "hello | hi" in capsys.readouterr().out
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
    time.sleep(0.2)
    assert not alive(grandchild)


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting for a reaper that is not us."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
