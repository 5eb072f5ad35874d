"""Runs the services as local processes: one child per component, its whole output kept in a
log file of its own (and echoed, prefixed with its name, when asked), health waited for, and
every child's process group stopped when one dies or on Ctrl-C, saying which died and why.

With restart settings, a component that dies once it has been ready is restarted instead,
after a wait that doubles with each crash (as docker compose restarts it), while the others
serve on; only more crashes within the window than the settings allow stop everything.

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

from gvloop.restarts import Restart, RestartSettings
from services.processes import INSTANCE_ENV, die_with_parent, in_use_by, serves_port

logger = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 5.0
HEALTH_POLL_S = 1.0


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now (bound together, so they differ)."""
    sockets = [socket.create_server(("127.0.0.1", 0)) for _ in range(count)]
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


class ComponentDiedError(RuntimeError):
    def __init__(self, name: str, returncode: int, tail: list[str], why: str = "") -> None:
        """`why`: after the code, why it is not restarted (nothing when restarts are off)."""
        last = "\n".join(f"    {line}" for line in tail[-15:])
        super().__init__(f"{name} exited with code {returncode}{why}; its last lines:\n{last}")
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
    """A component's place in the launcher: the process now running it (a restart replaces
    it), and the component's crashes."""

    component: Component
    instance: str
    process: subprocess.Popen[str]
    tail: deque[str]
    """The last lines of every process that ran it, oldest first."""
    pump: threading.Thread
    started: float
    """time.monotonic() at this process' start: its ready_timeout_s counts from here."""
    ready: bool = False
    served: bool = False
    """Ready at least once: from then on a death is a crash to restart, not a failed start."""
    crashes: deque[float] = field(default_factory=deque)
    """time.monotonic() of each crash within the restart window."""
    restart_at: float | None = None
    """time.monotonic() at which it is restarted; None while a process runs it."""


ComponentState = Literal["starting", "ready", "exited", "finished", "restarting"]


class Launcher:
    def __init__(
        self,
        log_dir: Path,
        echo: bool = True,
        on_state: Callable[[str, ComponentState], None] | None = None,
        restart: RestartSettings | None = None,
        on_restart: Callable[[Restart], None] | None = None,
    ) -> None:
        """`echo`: copy each child's lines to stdout, prefixed; `on_state(name, state)`: told
        when a component starts, becomes ready, exits or waits to restart (a console shows
        it). `restart`: when a component that dies is restarted (None: never, a death stops
        everything); `on_restart`: told of each restart, after `on_state`'s `restarting`."""
        self.log_dir = log_dir
        self.echo = echo
        self.on_state = on_state
        self.restart = restart
        self.on_restart = on_restart
        self.running: list[_Running] = []
        self.finished: set[str] = set()
        """Components that exited with their work done (`may_finish`)."""
        log_dir.mkdir(parents=True, exist_ok=True)
        self._width = 9

    def start(self, component: Component) -> None:
        """Start a component; `wait_ready` then waits for its health."""
        tail: deque[str] = deque(maxlen=200)
        self._width = max(self._width, len(component.name))
        instance, process, pump = self._spawn(component, tail)
        self.running.append(
            _Running(component, instance, process, tail, pump, started=time.monotonic())
        )

    def _spawn(
        self, component: Component, tail: deque[str]
    ) -> tuple[str, subprocess.Popen[str], threading.Thread]:
        """A new process of `component`, with an instance id of its own, its lines going to
        `tail` and appended to its log file."""
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
        pump = threading.Thread(
            target=self._pump, args=(component.name, process, tail), daemon=True
        )
        pump.start()
        logger.info(
            "started %s (pid %d): %s", component.name, process.pid, " ".join(component.command)
        )
        self._tell(component.name, "starting")
        return instance, process, pump

    def wait_ready(self) -> None:
        """Wait until every started component is healthy (or done, `may_finish`); a death not
        restarted, a timeout or a foreign server raises."""
        while True:
            self.check()
            if all(run.ready or run.component.name in self.finished for run in self.running):
                return
            time.sleep(HEALTH_POLL_S)

    def check(self) -> None:
        """One look at every component, never blocking for long: raise ComponentDiedError for
        one that exited, unless its work is done (`may_finish`, status 0) or the restart
        settings let it be restarted once its backoff has passed; announce each that answers
        its health URL, raising for one past its ready_timeout_s or answered by a foreign
        server."""
        for run in self.running:
            if run.restart_at is not None:
                if time.monotonic() >= run.restart_at:
                    self._restart(run)
                continue
            code = run.process.poll()
            if code == 0 and run.component.may_finish:
                if run.component.name not in self.finished:
                    self.finished.add(run.component.name)
                    self._tell(run.component.name, "finished")
            elif code is not None:
                self._died(run, code)
            elif not run.ready:
                self._probe(run)

    def _died(self, run: _Running, code: int) -> None:
        """Schedule the restart of a component that exited, or raise ComponentDiedError."""
        name = run.component.name
        # what it left in its group (vLLM's engine core) would hold its port and memory
        _signal_group(run.process, signal.SIGKILL)
        run.pump.join(timeout=2)
        run.ready = False
        now, at = time.monotonic(), time.time()
        settings = self.restart
        if settings is None or settings.max == 0:
            self._tell(name, "exited")
            raise ComponentDiedError(name, code, list(run.tail))
        if not run.served:
            self._tell(name, "exited")
            # a restart would most likely die the same way (a bad setting, a port taken)
            raise ComponentDiedError(
                name, code, list(run.tail), " before it was ever ready: not restarted"
            )
        run.crashes.append(now)
        while run.crashes[0] < now - settings.window_s:
            run.crashes.popleft()
        crash = len(run.crashes)
        if crash > settings.max:
            self._tell(name, "exited")
            raise ComponentDiedError(
                name,
                code,
                list(run.tail),
                f" (crash {crash} in {settings.window_s:g} s, over GVLOOP_RESTART_MAX="
                f"{settings.max}): not restarted",
            )
        restart = Restart(
            component=name,
            returncode=code,
            at=at,
            crash=crash,
            max=settings.max,
            window_s=settings.window_s,
            delay_s=settings.delay_s(crash),
        )
        logger.warning("%s", restart.line)
        run.restart_at = now + restart.delay_s
        self._tell(name, "restarting")
        if self.on_restart is not None:
            self.on_restart(restart)

    def _restart(self, run: _Running) -> None:
        run.instance, run.process, run.pump = self._spawn(run.component, run.tail)
        run.started = time.monotonic()
        run.restart_at = None

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

    def _probe(self, run: _Running) -> None:
        """One look at a component's health URL: announce it ready on a 200 from its own
        child, raise once its ready_timeout_s has passed without one."""
        component = run.component
        if component.health_url is not None:
            cause = self._unhealthy(run)
            if cause is not None:
                if time.monotonic() - run.started > component.ready_timeout_s:
                    raise ComponentNotReadyError(
                        f"{component.name} not healthy at {component.health_url} after "
                        f"{component.ready_timeout_s:.0f}s ({cause}); see "
                        f"{self.log_dir / component.name}.log"
                    )
                return
            logger.info("%s healthy after %.1fs", component.name, time.monotonic() - run.started)
        run.ready = run.served = True
        self._tell(component.name, "ready")

    def _unhealthy(self, run: _Running) -> str | None:
        """Why the health URL does not answer for the component; None when it does."""
        assert run.component.health_url is not None
        try:
            response = httpx.get(run.component.health_url, timeout=HEALTH_TIMEOUT_S)
        except httpx.TransportError as exc:
            return type(exc).__name__
        if response.status_code != 200:
            return f"HTTP {response.status_code}"
        self._check_identity(run, response)
        return None

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
