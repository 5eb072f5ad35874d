"""The launcher restarting components that crash, with real child processes killed by real
signals: a crashed component comes back (a new process and instance id, healthy again, its log
appended) while the other serves on untouched; the wait before each restart doubles up to its
cap; a component slow to come back does not keep another's crash from being seen; crashes that
leave the window are forgiven; one crash more than the settings allow, a death before the first
ready, or restarts off stop everything as before; a component whose work is done is not
restarted."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from gvloop.launcher import Component, ComponentDiedError, Launcher, free_ports
from gvloop.restarts import Restart, RestartSettings
from tests.utils.waits import wait_until

# short waits: what is asserted is their order and lower bounds, never how fast anything is
FAST = RestartSettings(max=3, window_s=60, backoff_s=0.01, backoff_max_s=0.04)


def server(port: int, slow_restart: Path | None = None) -> list[str]:
    """A server answering every GET with its GVLOOP_INSTANCE_ID, printing its pid as it starts;
    while the file `slow_restart` exists, it waits ten minutes before it listens."""
    script = f"""
import http.server, json, os, time
print("serving", os.getpid(), flush=True)
if {str(slow_restart or "")!r} and os.path.exists({str(slow_restart or "")!r}):
    time.sleep(600)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({{"instance": os.environ["GVLOOP_INSTANCE_ID"]}}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", {port}), Handler).serve_forever()
"""
    return [sys.executable, "-c", script]


def web(name: str, port: int, slow_restart: Path | None = None) -> Component:
    return Component(
        name,
        server(port, slow_restart),
        health_url=f"http://127.0.0.1:{port}/health",
        identity="instance",
    )


def sleeper(name: str, code_on_sigterm: int = 1, may_finish: bool = False) -> Component:
    """Ready once started (no health URL); exits with `code_on_sigterm` on SIGTERM."""
    script = (
        "import os, signal, sys, time; "
        f"signal.signal(signal.SIGTERM, lambda *_: sys.exit({code_on_sigterm})); "
        "print('up', os.getpid(), flush=True); time.sleep(600)"
    )
    return Component(name, [sys.executable, "-c", script], may_finish=may_finish)


class Watched:
    """A launcher, and what it told: each (name, state, time.time() when told), and each
    restart."""

    def __init__(self, log_dir: Path, restart: RestartSettings | None) -> None:
        self.told: list[tuple[str, str, float]] = []
        self.restarts: list[Restart] = []
        self.launcher = Launcher(
            log_dir,
            echo=False,
            on_state=self._told,
            restart=restart,
            on_restart=self.restarts.append,
        )

    def _told(self, name: str, state: str) -> None:
        self.told.append((name, state, time.time()))

    def of(self, name: str) -> list[str]:
        return [state for component, state, _ in self.told if component == name]

    def pid(self, name: str) -> int:
        (run,) = [r for r in self.launcher.running if r.component.name == name]
        return run.process.pid

    def ready(self, name: str) -> bool:
        (run,) = [r for r in self.launcher.running if r.component.name == name]
        return run.ready

    def checking_until(self, condition: Callable[[], bool], what: str) -> None:
        """Call check() as `gvloop up`'s supervisor does, until `condition` holds."""
        wait_until(lambda: self.launcher.check() or condition(), what)

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> int:
        """Signal the component's process group, as a crash or the OOM killer would, once it
        has said its pid (set up, its SIGTERM handler too); its pid."""
        (run,) = [r for r in self.launcher.running if r.component.name == name]
        pid = run.process.pid
        wait_until(lambda: any(line.endswith(f" {pid}") for line in run.tail), f"{name} set up")
        os.killpg(pid, sig)
        return pid

    def crash_and_return(self, name: str) -> int:
        """SIGKILL it, then check until a new process of it is ready; the new pid."""
        old = self.kill(name)
        self.checking_until(lambda: self.ready(name) and self.pid(name) != old, f"{name} back")
        return self.pid(name)


def test_a_crashed_component_comes_back_and_the_other_serves_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port, other_port = free_ports(2)
    watched = Watched(tmp_path, FAST)
    with watched.launcher as launcher, httpx.Client(timeout=5) as client:
        launcher.start(web("web", port))
        launcher.start(web("other", other_port))
        launcher.wait_ready()
        other_pid = watched.pid("other")
        other_instance = client.get(f"http://127.0.0.1:{other_port}/").json()["instance"]
        old_pid = watched.pid("web")
        old_instance = client.get(f"http://127.0.0.1:{port}/").json()["instance"]
        answers: list[dict[str, str]] = []

        def back() -> bool:
            # the other component answers all along, from the same process
            answers.append(client.get(f"http://127.0.0.1:{other_port}/").json())
            return watched.ready("web") and watched.pid("web") != old_pid

        with caplog.at_level(logging.WARNING, logger="gvloop.launcher"):
            watched.kill("web")
            watched.checking_until(back, "web restarted and healthy")
        new_pid = watched.pid("web")
        assert client.get(f"http://127.0.0.1:{port}/").json()["instance"] != old_instance
        assert answers and all(a == {"instance": other_instance} for a in answers)
        assert watched.pid("other") == other_pid
        log = tmp_path / "web.log"  # appended, not started afresh
        wait_until(lambda: f"serving {new_pid}" in log.read_text(), "the new process' line")
        assert log.read_text() == f"serving {old_pid}\nserving {new_pid}\n"
    line = "web exited with code -9 (crash 1 of 3 in 60 s): restarting in 0.01 s"
    assert [r.line for r in watched.restarts] == [line]
    assert [r.getMessage() for r in caplog.records if r.name == "gvloop.launcher"] == [line]
    assert watched.of("web") == ["starting", "ready", "restarting", "starting", "ready"]
    assert watched.of("other") == ["starting", "ready"]


def test_the_wait_before_a_restart_doubles_up_to_its_cap(tmp_path: Path) -> None:
    watched = Watched(tmp_path, RestartSettings(max=5, backoff_s=0.2, backoff_max_s=0.5))
    with watched.launcher as launcher:
        launcher.start(sleeper("worker"))
        launcher.wait_ready()
        for _ in range(4):
            watched.crash_and_return("worker")
    delays = [r.delay_s for r in watched.restarts]
    assert delays == [0.2, 0.4, 0.5, 0.5]  # doubled, then capped
    assert [r.crash for r in watched.restarts] == [1, 2, 3, 4]
    # each new process started no sooner than its delay after the crash was seen
    restarted = [at for _, state, at in watched.told if state == "starting"]
    for restart, started in zip(watched.restarts, restarted[1:], strict=True):
        assert started - restart.at >= restart.delay_s - 0.001


def test_a_slow_restart_does_not_hide_another_crash(tmp_path: Path) -> None:
    # while one restarted component takes its time to answer its health URL, another crashes:
    # the launcher sees it and restarts it too, each check() returning at once
    port, other_port = free_ports(2)
    slow = tmp_path / "slow"
    watched = Watched(tmp_path, FAST)
    with watched.launcher as launcher:
        launcher.start(web("slow", port, slow_restart=slow))
        launcher.start(web("other", other_port))
        launcher.wait_ready()
        slow.touch()  # its next process waits before it listens
        old_slow = watched.kill("slow")
        watched.checking_until(lambda: watched.pid("slow") != old_slow, "slow restarted")
        watched.crash_and_return("other")
        assert not watched.ready("slow")
    assert [r.component for r in watched.restarts] == ["slow", "other"]


def test_crashes_that_left_the_window_are_forgiven(tmp_path: Path) -> None:
    watched = Watched(tmp_path, RestartSettings(max=1, window_s=0.5, backoff_s=0.01))
    with watched.launcher as launcher:
        launcher.start(sleeper("worker"))
        launcher.wait_ready()
        watched.crash_and_return("worker")
        time.sleep(0.6)  # the first crash is out of the window
        watched.crash_and_return("worker")
    assert [(r.crash, r.delay_s) for r in watched.restarts] == [(1, 0.01), (1, 0.01)]


def test_one_crash_more_than_allowed_stops_everything_with_the_last_lines(
    tmp_path: Path,
) -> None:
    watched = Watched(tmp_path, RestartSettings(max=2, window_s=600, backoff_s=0.01))
    with watched.launcher as launcher:
        launcher.start(sleeper("crasher"))
        launcher.start(sleeper("bystander"))
        launcher.wait_ready()
        pids = [watched.pid("crasher")]
        pids.append(watched.crash_and_return("crasher"))
        pids.append(watched.crash_and_return("crasher"))
        watched.kill("crasher")
        with pytest.raises(ComponentDiedError) as died:
            watched.checking_until(lambda: False, "the third crash seen")
    first_line, *tail = str(died.value).splitlines()
    assert first_line == (
        "crasher exited with code -9 (crash 3 in 600 s, over GVLOOP_RESTART_MAX=2): "
        "not restarted; its last lines:"
    )
    assert tail == [f"    up {pid}" for pid in pids]  # every process that ran it
    assert [r.crash for r in watched.restarts] == [1, 2]
    assert watched.of("crasher")[-1] == "exited"
    assert watched.of("bystander") == ["starting", "ready"]


@pytest.mark.parametrize("restart", [None, RestartSettings(max=0)], ids=["none", "max-0"])
def test_without_restarts_a_crash_stops_everything_at_once(
    tmp_path: Path, restart: RestartSettings | None
) -> None:
    watched = Watched(tmp_path, restart)
    with watched.launcher as launcher:
        launcher.start(sleeper("trainer"))
        launcher.wait_ready()
        pid = watched.kill("trainer")
        with pytest.raises(ComponentDiedError) as died:
            watched.checking_until(lambda: False, "the crash seen")
    assert str(died.value) == f"trainer exited with code -9; its last lines:\n    up {pid}"
    assert watched.restarts == []
    assert watched.of("trainer") == ["starting", "ready", "exited"]


def test_a_component_that_dies_before_it_was_ever_ready_is_not_restarted(
    tmp_path: Path,
) -> None:
    watched = Watched(tmp_path, FAST)
    with watched.launcher as launcher:
        launcher.start(
            Component(
                "crasher",
                [sys.executable, "-c", "print('bad config'); exit(3)"],
                health_url=f"http://127.0.0.1:{free_ports(1)[0]}/",
            )
        )
        with pytest.raises(ComponentDiedError) as died:
            launcher.wait_ready()
    assert str(died.value) == (
        "crasher exited with code 3 before it was ever ready: not restarted; its last lines:\n"
        "    bad config"
    )
    assert watched.restarts == []


@pytest.mark.parametrize(
    ("may_finish", "code", "restarted"),
    [
        (True, 0, False),  # the trainer at its last step: done
        (True, 3, True),  # the trainer failing: a crash
        (False, 0, True),  # a server that stops is a death, whatever its status
    ],
)
def test_only_work_done_is_not_restarted(
    tmp_path: Path, may_finish: bool, code: int, restarted: bool
) -> None:
    watched = Watched(tmp_path, FAST)
    with watched.launcher as launcher:
        launcher.start(sleeper("trainer", code_on_sigterm=code, may_finish=may_finish))
        launcher.wait_ready()
        old = watched.kill("trainer", signal.SIGTERM)
        if restarted:
            watched.checking_until(lambda: watched.pid("trainer") != old, "a new process")
            assert [r.returncode for r in watched.restarts] == [code]
        else:
            watched.checking_until(lambda: launcher.finished == {"trainer"}, "finished")
            launcher.check()
            assert watched.pid("trainer") == old and watched.restarts == []
            assert watched.of("trainer") == ["starting", "ready", "finished"]
