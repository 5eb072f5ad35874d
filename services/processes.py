"""The local processes a gvloop command starts or runs into: children that die with their
parent, a supervisor for a server that does not always stop, the instance id a launcher hands
its children, and who holds a port.

`gvloop up` starts every component with `die_with_parent()`, so that a launcher killed hard
(SIGKILL, the out-of-memory killer) leaves no orphan holding ports and serving stale weights; it
passes each one an instance id in GVLOOP_INSTANCE_ID, which the APIs echo in /health so the
launcher never takes another run's service for its own child.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from types import FrameType

import psutil

logger = logging.getLogger(__name__)

INSTANCE_ENV = "GVLOOP_INSTANCE_ID"
# <linux/prctl.h>
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


class PortInUseError(RuntimeError):
    pass


def instance_id() -> str | None:
    """The id the launcher that started this process gave it (None when started by hand)."""
    return os.environ.get(INSTANCE_ENV)


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None] | None:
    """A Popen `preexec_fn` that has the kernel send `sig` to the child when its parent goes,
    however it goes; None (nothing to set) off Linux.

    SIGTERM, not SIGKILL: the child stops as it does on Ctrl-C, its own children with it (Redis
    flushes its append-only file, the trainer checkpoints). The kernel keeps the setting
    across exec, but sends it when the *thread* that started the child exits: start children
    from a thread that lives as long as they should (the main thread, or a pool's worker)."""
    if not sys.platform.startswith("linux"):
        return None
    # Looked up now: between fork and exec the child should call, not load, anything.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os.kill(os.getpid(), sig)

    return arm


def run_supervised(argv: list[str], env: dict[str, str], stop_grace_s: float = 10.0) -> int:
    """Run `argv` as a child that dies with this process, and return its exit status (128 + N
    when signal N ended it). SIGTERM and SIGINT are passed on; a child still running
    `stop_grace_s` after one is killed; whatever it leaves behind, its own children included,
    is killed when it exits.

    For a server that does not always stop on SIGTERM: vLLM ignores one that arrives while
    its engine starts, then serves on, an orphan holding its port, its engine core with it."""
    if sys.platform.startswith("linux"):
        # The child's orphans come to us instead of init, so that they can be found and killed.
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    child = subprocess.Popen(argv, env=env, preexec_fn=die_with_parent())
    stop_asked_at: float | None = None

    def pass_on(signum: int, _frame: FrameType | None) -> None:
        nonlocal stop_asked_at
        # A signal to the whole process group reaches the child twice: vLLM, like uvicorn,
        # takes a repeated stop signal as the same request.
        child.send_signal(signum)
        stop_asked_at = stop_asked_at or time.monotonic()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, pass_on)
    while True:
        try:
            code = child.wait(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            if stop_asked_at is not None and time.monotonic() - stop_asked_at > stop_grace_s:
                logger.warning(
                    "%s still runs %.0fs after a stop signal: killing it and its children",
                    " ".join(argv)[:100],
                    stop_grace_s,
                )
                kill_descendants()
    kill_descendants()
    return code if code >= 0 else 128 - code


def kill_descendants() -> None:
    """SIGKILL every process under this one."""
    for process in psutil.Process().children(recursive=True):
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def port_holders(port: int) -> list[psutil.Process]:
    """Processes listening on TCP `port` that this user may see (others' are not named)."""
    try:
        connections = psutil.net_connections(kind="inet")
    except psutil.AccessDenied:  # macOS without root
        return []
    pids = {
        c.pid
        for c in connections
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid
    }
    holders = []
    for pid in sorted(pids):
        try:
            holders.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    return holders


def serves_port(pid: int, port: int) -> bool:
    """Whether process `pid` or one of its descendants listens on TCP `port`."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return False
    for process in tree:
        try:
            connections = process.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in connections):
            return True
    return False


def in_use_by(port: int) -> str:
    """' by pid N (its command line): stop it (kill N)' for whoever listens on `port`, or
    ': stop the server on it' when this user may not see who."""
    holders = []
    for process in port_holders(port):
        try:
            command = " ".join(" ".join(process.cmdline()).split())[:120] or process.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            command = "?"
        holders.append((process.pid, command))
    if not holders:
        return ": stop the server on it"
    named = ", ".join(f"pid {pid} ({command})" for pid, command in holders)
    return f" by {named}: stop it (kill {' '.join(str(pid) for pid, _ in holders)})"


def check_port_free(host: str, port: int, elsewhere: str) -> None:
    """Raise PortInUseError, naming who holds `port` and how to free it, if a server could not
    listen on `host`:`port` now. `elsewhere` says how to pick another port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # as uvicorn and vLLM bind: connections of a stopped server in TIME_WAIT do not count
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            return
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
    raise PortInUseError(
        f"port {port} on {host} is already in use{in_use_by(port)}, or {elsewhere}"
    )


def exit_if_port_in_use(host: str, port: int, elsewhere: str) -> None:
    """`check_port_free` for a server command: one error line and exit code 2, not a
    traceback after minutes of loading."""
    try:
        check_port_free(host, port, elsewhere)
    except PortInUseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
