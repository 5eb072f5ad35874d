"""`run_supervised` with real processes: what `gvloop agent-a engine` runs vLLM under. A child
that ignores SIGTERM is killed after the grace, and nothing the child started outlives it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

# the parent-death signal and the subreaper are Linux's
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux process control")

# The supervised child: starts a grandchild, writes both pids, then lives until killed;
# IGNORE_TERM=1 makes it deaf to SIGTERM, as vLLM is while its engine starts.
CHILD = """
import os, signal, subprocess, sys, time
if os.environ.get("IGNORE_TERM") == "1":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
open(sys.argv[1], "w").write(f"{os.getpid()} {grandchild.pid}")
time.sleep(float(sys.argv[2]))
"""


GRACE_S = 1


def supervise(pids: Path, child_lives_s: float, ignore_term: bool) -> subprocess.Popen[str]:
    """A process running CHILD under run_supervised with a one-second stop grace; its stderr
    (where the supervisor's warnings go) is piped."""
    argv = [sys.executable, "-c", CHILD, str(pids), str(child_lives_s)]
    script = (
        "import os, sys; from services.processes import run_supervised; "
        f"sys.exit(run_supervised({argv!r}, dict(os.environ), stop_grace_s={GRACE_S}))"
    )
    env = {**os.environ, "IGNORE_TERM": "1" if ignore_term else "0"}
    return subprocess.Popen(
        [sys.executable, "-c", script], env=env, stderr=subprocess.PIPE, text=True
    )


def read_pids(path: Path) -> list[int]:
    deadline = time.monotonic() + 30
    while not (path.exists() and len(path.read_text().split()) == 2):
        assert time.monotonic() < deadline, "the child never started"
        time.sleep(0.05)
    return [int(pid) for pid in path.read_text().split()]


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_child_deaf_to_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    supervisor = supervise(tmp_path / "pids", child_lives_s=120, ignore_term=True)
    child, grandchild = read_pids(tmp_path / "pids")
    started = time.monotonic()
    supervisor.send_signal(signal.SIGTERM)
    _, stderr = supervisor.communicate(timeout=120)
    assert supervisor.returncode == 128 + signal.SIGKILL
    # killed only once the grace had passed, and saying so
    assert time.monotonic() - started >= GRACE_S
    assert f"still runs {GRACE_S}s after a stop signal: killing it and its children" in stderr
    assert not running(child) and not running(grandchild)


def test_what_the_child_leaves_behind_is_killed(tmp_path: Path) -> None:
    supervisor = supervise(tmp_path / "pids", child_lives_s=0.5, ignore_term=False)
    _, grandchild = read_pids(tmp_path / "pids")
    assert supervisor.wait(120) == 0  # the child's own exit status
    assert not running(grandchild)


def test_the_child_dies_with_a_killed_supervisor(tmp_path: Path) -> None:
    supervisor = supervise(tmp_path / "pids", child_lives_s=120, ignore_term=False)
    child, grandchild = read_pids(tmp_path / "pids")
    supervisor.kill()
    supervisor.wait()
    deadline = time.monotonic() + 60
    while running(child):
        assert time.monotonic() < deadline, "the child outlived its supervisor"
        time.sleep(0.1)
    # Its own children are its business (vLLM stops its engine core on SIGTERM); under the
    # launcher they share its process group, which the launcher kills.
    os.kill(grandchild, signal.SIGKILL)
