"""`gvloop up` run as a user runs it, on the tiny model: it refuses to start beside a server on
one of its ports or beside another run on its data directory, when it is killed hard every
process it started goes with it, vLLM's engine core included, so the next run starts cleanly,
and a trainer killed hard is restarted while the other components serve on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest

from gvloop.preflight import LOCK_NAME
from gvloop.restarts import RECORD_NAME
from gvloop.topology import StackPorts
from tests.integration.gvloop.up_process import Up

READY = "pipeline up"


def survivors(processes: list[psutil.Process]) -> list[str]:
    """The command lines of those still running (a zombie waiting for init is not)."""
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{process.pid}: {' '.join(process.cmdline())[:150]}")
        except psutil.NoSuchProcess:
            pass
    return alive


# Generous: what is asserted is that they go, not how fast (a busy machine takes its time).
GONE_DEADLINE_S = 120


def wait_gone(processes: list[psutil.Process]) -> float:
    """Seconds until none of `processes` runs; fails naming the survivors at the deadline."""
    started = time.monotonic()
    while alive := survivors(processes):
        assert time.monotonic() - started < GONE_DEADLINE_S, "still running:\n" + "\n".join(alive)
        time.sleep(0.2)
    return time.monotonic() - started


@pytest.fixture
def up_runs() -> Iterator[list[Up]]:
    """Start `gvloop up` with `runs.append(Up(...))`; whatever still runs is stopped after."""
    runs: list[Up] = []
    yield runs
    for run in runs:
        run.stop()


class HealthyHandler(BaseHTTPRequestHandler):
    """A server that is not gvloop's, answering 200 on /health as an engine would."""

    def do_GET(self) -> None:
        body = json.dumps({"status": "ok"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_refuses_a_port_another_server_answers_on(
    tiny_model_dir: Path, tmp_path: Path, up_runs: list[Up]
) -> None:
    ports = StackPorts.free()
    foreign = ThreadingHTTPServer(("127.0.0.1", ports.engine), HealthyHandler)
    threading.Thread(target=foreign.serve_forever, daemon=True).start()
    try:
        up_runs.append(up := Up(tiny_model_dir, tmp_path / "data", ports))
        assert up.finish() == 1
    finally:
        foreign.shutdown()
        foreign.server_close()
    # one line naming the port, who holds it, and how to get out of the way
    (error,) = [line for line in up.lines if line.startswith("gvloop up:")]
    assert f"port {ports.engine} on 127.0.0.1 is already in use by pid {os.getpid()}" in error
    assert f"kill {os.getpid()}" in error and "GVLOOP_ENGINE_PORT" in error
    # nothing started: no Redis, no component logs
    assert not (tmp_path / "data" / "redis").exists()
    assert not (tmp_path / "data" / "logs").exists()


@pytest.mark.slow
def test_one_run_per_data_directory(
    tiny_model_dir: Path, tmp_path: Path, up_runs: list[Up]
) -> None:
    data_dir = tmp_path / "data"
    up_runs.append(first := Up(tiny_model_dir, data_dir, StackPorts.free()))
    lock = data_dir / LOCK_NAME
    deadline = time.monotonic() + 60
    while not (lock.exists() and lock.read_text().strip()):
        assert first.process.poll() is None and time.monotonic() < deadline, first.output
        time.sleep(0.2)
    assert lock.read_text().strip() == str(first.process.pid)

    # on other ports, so that the data directory alone stands in its way
    up_runs.append(second := Up(tiny_model_dir, data_dir, StackPorts.free()))
    assert second.finish() == 1
    (error,) = [line for line in second.lines if line.startswith("gvloop up:")]
    assert f"another gvloop up (pid {first.process.pid}) is running on {data_dir}" in error
    assert f"kill {first.process.pid}" in error and "GVLOOP_DATA_DIR" in error
    assert first.process.poll() is None  # the first run goes on

    tree = first.tree()
    first.process.send_signal(signal.SIGTERM)
    assert first.finish() in (0, 1, 130)
    wait_gone(tree)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's")
def test_sigkill_leaves_nothing_and_the_next_run_outlives_a_trainer_crash(
    tiny_model_dir: Path, tmp_path: Path, up_runs: list[Up]
) -> None:
    data_dir, ports = tmp_path / "data", StackPorts.free()
    up_runs.append(first := Up(tiny_model_dir, data_dir, ports))
    first.wait_for(READY)
    tree = first.tree()
    commands = " ".join(" ".join(p.cmdline()) for p in tree)
    for part in ("redis-server", "agent-a engine", "VLLM::EngineCore", "agent-b serve"):
        assert part in commands, part
    assert "agent-a serve" in commands and "trainer run" in commands

    first.process.kill()  # as the out-of-memory killer would
    first.finish()
    took = wait_gone(tree)
    print(f"{len(tree)} processes gone {took:.1f}s after SIGKILL")

    up_runs.append(second := Up(tiny_model_dir, data_dir, ports))
    second.wait_for(READY)
    assert "already in use" not in second.output

    # the trainer killed hard: restarted, while every other process serves on
    tree = second.tree()
    (trainer,) = [p for p in tree if "gvloop trainer run" in " ".join(p.cmdline())]
    others = [p for p in tree if p.pid != trainer.pid]
    trainer.kill()
    second.wait_for("trainer exited with code -9 (crash 1 of 5 in 300 s): restarting in 1 s")
    second.wait_for("trainer ready again")  # fails at once if gvloop up stopped instead
    assert len(survivors(others)) == len(others)
    status = subprocess.run(
        [sys.executable, "-m", "gvloop", "status"],
        env=second.env | {"COLUMNS": "250"},  # a row on one line
        cwd=data_dir.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    restarted = "restarted 1x (last: exited with code -9, "
    rows = [line for line in status.stdout.splitlines() if restarted in line]
    assert len(rows) == 1 and "trainer" in rows[0], status.stdout

    tree = second.tree()
    started = time.monotonic()
    second.process.send_signal(signal.SIGTERM)
    second.finish()
    wait_gone(tree)
    print(f"SIGTERM stopped the second run in {time.monotonic() - started:.1f}s")
    assert not (data_dir / RECORD_NAME).exists()  # what status read is gone with the run
