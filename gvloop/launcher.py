"""Runs the services as local processes: one child per component, its whole output kept in a
log file of its own (and echoed, prefixed with its name, when asked), health waited for in
order, and every child's process group stopped when one dies or on Ctrl-C, saying which died and
why.

Each child dies with the launcher, however the launcher dies (a parent-death signal), and a
health answer counts only when it comes from that child: a stale or foreign server on the same
port is never taken for it."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx

from services.processes import INSTANCE_ENV, die_with_parent, in_use_by, serves_port

logger = logging.getLogger(__name__)


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now (bound together, so they differ)."""
    sockets = [socket.create_server(("127.0.0.1", 0)) for _ in range(count)]
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


class ComponentDiedError(RuntimeError):
    def __init__(self, name: str, returncode: int, tail: list[str]) -> None:
        last = "\n".join(f"    {line}" for line in tail[-15:])
        super().__init__(f"{name} exited with code {returncode}; its last lines:\n{last}")
        self.name = name
        self.returncode = returncode


class ComponentNotReadyError(RuntimeError):
    pass


class ForeignServiceError(ComponentNotReadyError):
    """The health URL answers, but another process than the component serves it."""


@dataclass
class Component:
    name: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    health_url: str | None = None
    """Polled until it answers 200; None: ready once started."""
    identity: Literal["instance", "listener"] = "listener"
    """How a 200 from health_url is known to come from this child: `instance`, the JSON body's
    `instance` is the id the launcher passed it in GVLOOP_INSTANCE_ID; `listener`, the port is
    held by the child or one of its descendants (for servers that cannot echo the id)."""
    ready_timeout_s: float = 600.0
    stop_timeout_s: float = 20.0
    """Grace between SIGTERM and SIGKILL."""
    may_finish: bool = False
    """An exit with status 0 is its work done (the trainer at its last step), not a death."""


@dataclass
class _Running:
    component: Component
    instance: str
    process: subprocess.Popen[str]
    tail: deque[str]
    pump: threading.Thread
    ready: bool = False


ComponentState = Literal["starting", "ready", "exited", "finished"]


class Launcher:
    def __init__(
        self,
        log_dir: Path,
        echo: bool = True,
        on_state: Callable[[str, ComponentState], None] | None = None,
    ) -> None:
        """`echo`: copy each child's lines to stdout, prefixed; `on_state(name, state)`: told
        when a component starts, becomes ready and exits (a console shows it)."""
        self.log_dir = log_dir
        self.echo = echo
        self.on_state = on_state
        self.running: list[_Running] = []
        self.finished: set[str] = set()
        """Components that exited with their work done (`may_finish`)."""
        log_dir.mkdir(parents=True, exist_ok=True)
        self._width = 9

    def start(self, component: Component) -> None:
        """Start a component; `wait_ready` then waits for its health."""
        instance = secrets.token_hex(8)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **component.env, INSTANCE_ENV: instance}
        process = subprocess.Popen(
            component.command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            bufsize=1,
            start_new_session=True,  # its own process group, so stopping it stops its children
            preexec_fn=die_with_parent(),
        )
        tail: deque[str] = deque(maxlen=200)
        self._width = max(self._width, len(component.name))
        pump = threading.Thread(
            target=self._pump, args=(component.name, process, tail), daemon=True
        )
        pump.start()
        self.running.append(_Running(component, instance, process, tail, pump))
        logger.info(
            "started %s (pid %d): %s", component.name, process.pid, " ".join(component.command)
        )
        self._tell(component.name, "starting")

    def wait_ready(self) -> None:
        """Wait for every started component's health URL; a death or a timeout raises."""
        for run in self.running:
            self._wait_healthy(run)

    def check(self) -> None:
        """Raise ComponentDiedError if any component has exited, but for one whose work is
        done (`may_finish`, status 0)."""
        for run in self.running:
            code = run.process.poll()
            if code == 0 and run.component.may_finish:
                if run.component.name not in self.finished:
                    self.finished.add(run.component.name)
                    self._tell(run.component.name, "finished")
            elif code is not None:
                run.pump.join(timeout=2)
                self._tell(run.component.name, "exited")
                raise ComponentDiedError(run.component.name, code, list(run.tail))

    def stop_all(self) -> None:
        """SIGTERM every process group (last started first), SIGKILL what outlives its
        component's stop_timeout_s."""
        for run in reversed(self.running):
            _signal_group(run.process, signal.SIGTERM)
        started = time.monotonic()
        for run in reversed(self.running):
            grace = run.component.stop_timeout_s
            try:
                run.process.wait(max(0.1, started + grace - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning(
                    "%s ignored SIGTERM for %.0fs: killing it", run.component.name, grace
                )
                _signal_group(run.process, signal.SIGKILL)
                run.process.wait()
            # Children of a component (vLLM's engine core) stay in its group: clean them too.
            _signal_group(run.process, signal.SIGKILL)
        self.running.clear()

    def _tell(self, name: str, state: ComponentState) -> None:
        if self.on_state is not None:
            self.on_state(name, state)

    def _wait_healthy(self, run: _Running) -> None:
        # wait_ready runs again after every start: a component is announced ready only once
        if run.ready:
            return
        component = run.component
        if component.health_url is None:
            run.ready = True
            self._tell(component.name, "ready")
            return
        started = time.monotonic()
        deadline = started + component.ready_timeout_s
        cause = "no answer yet"
        with httpx.Client(timeout=5.0) as client:
            while time.monotonic() < deadline:
                self.check()
                try:
                    response = client.get(component.health_url)
                    if response.status_code == 200:
                        self._check_identity(run, response)
                        logger.info(
                            "%s healthy after %.1fs", component.name, time.monotonic() - started
                        )
                        run.ready = True
                        self._tell(component.name, "ready")
                        return
                    cause = f"HTTP {response.status_code}"
                except httpx.TransportError as exc:
                    cause = type(exc).__name__
                time.sleep(1.0)
        raise ComponentNotReadyError(
            f"{component.name} not healthy at {component.health_url} after "
            f"{component.ready_timeout_s:.0f}s ({cause}); see {self.log_dir / component.name}.log"
        )

    def _check_identity(self, run: _Running, response: httpx.Response) -> None:
        """Raise ForeignServiceError unless `response` comes from `run`'s child."""
        port = response.url.port or 80
        if run.component.identity == "instance":
            try:
                body = response.json()
            except ValueError:
                body = None
            answered = body.get("instance") if isinstance(body, dict) else None
            if answered == run.instance:
                return
            whose = f"instance {answered}, not {run.instance}"
        elif serves_port(run.process.pid, port):
            return
        else:
            whose = f"not pid {run.process.pid} nor its children"
        raise ForeignServiceError(
            f"{run.component.name}: {run.component.health_url} answers, but from another "
            f"server ({whose}): port {port} is in use{in_use_by(port)}"
        )

    def _pump(self, name: str, process: subprocess.Popen[str], tail: deque[str]) -> None:
        assert process.stdout is not None
        with open(self.log_dir / f"{name}.log", "a", encoding="utf-8") as log:
            for line in process.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                log.write(line + "\n")
                log.flush()
                if self.echo:
                    sys.stdout.write(f"{name:>{self._width}} | {line}\n")
                    sys.stdout.flush()

    def __enter__(self) -> Launcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def _signal_group(process: subprocess.Popen[str], sig: signal.Signals) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
