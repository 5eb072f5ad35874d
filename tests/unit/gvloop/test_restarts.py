"""When `gvloop up` restarts a component: the settings, the wait before each restart, the lines
that say so, the console's component line, and the record `gvloop status` reads (only while its
`gvloop up` runs) and shows."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from gvloop.console import PlainConsole, components_text
from gvloop.restarts import (
    RECORD_NAME,
    ComponentRestarts,
    Restart,
    RestartRecord,
    RestartSettings,
)
from gvloop.runstate import RunState
from gvloop.status import ComponentStatus, status_table

# 14:02:11 local time, as the summaries show it
AT = time.mktime((2026, 1, 2, 14, 2, 11, 0, 0, -1))


@pytest.mark.parametrize(
    ("crash", "delay_s"),
    [
        (1, 1.0),  # the first crash in the window: the base wait
        (2, 2.0),  # each further one doubles it
        (3, 4.0),
        (5, 16.0),
        (6, 30.0),  # capped
        (40, 30.0),  # and no overflow far beyond
    ],
)
def test_the_delay_doubles_up_to_its_cap(crash: int, delay_s: float) -> None:
    assert RestartSettings(backoff_s=1, backoff_max_s=30).delay_s(crash) == delay_s


def test_settings_come_from_gvloop_restart_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GVLOOP_RESTART_MAX", "0")
    monkeypatch.setenv("GVLOOP_RESTART_WINDOW_S", "60")
    settings = RestartSettings(_env_file=None)  # type: ignore[call-arg]
    assert (settings.max, settings.window_s) == (0, 60.0)
    # compose's defaults: a few restarts, a second apart at first, half a minute at most
    defaults = RestartSettings.model_fields
    assert [defaults[k].default for k in ("max", "window_s", "backoff_s", "backoff_max_s")] == [
        5,
        300.0,
        1.0,
        30.0,
    ]


def test_a_restart_is_one_line() -> None:
    restart = Restart(
        component="trainer", returncode=-9, at=0, crash=1, max=5, window_s=300, delay_s=1
    )
    assert restart.line == "trainer exited with code -9 (crash 1 of 5 in 300 s): restarting in 1 s"


def test_restarts_summary_names_the_last_exit_and_its_time() -> None:
    restarts = ComponentRestarts(count=2, last_returncode=-9, last_at=AT)
    assert restarts.summary() == "restarted 2x (last: exited with code -9, 14:02:11)"


def test_the_record_is_read_while_its_writer_runs(tmp_path: Path) -> None:
    restarts = ComponentRestarts(count=1, last_returncode=3, last_at=0)
    RestartRecord(pid=os.getpid(), components={"engine": restarts}).save(tmp_path)
    read = RestartRecord.read(tmp_path)
    assert read is not None and read.components == {"engine": restarts}
    assert [p.name for p in tmp_path.iterdir()] == [RECORD_NAME]  # no temp file left
    RestartRecord.remove(tmp_path)
    assert RestartRecord.read(tmp_path) is None
    RestartRecord.remove(tmp_path)  # twice: nothing to remove is no error


def test_a_record_left_by_a_dead_run_or_unreadable_is_none(tmp_path: Path) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    RestartRecord(pid=int(gone.stdout)).save(tmp_path)  # a run killed by SIGKILL
    assert RestartRecord.read(tmp_path) is None
    (tmp_path / RECORD_NAME).write_text("{half a")
    assert RestartRecord.read(tmp_path) is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def crashed(code: int, crash: int) -> Restart:
    return Restart(
        component="trainer", returncode=code, at=AT, crash=crash, max=5, window_s=300, delay_s=1
    )


def test_the_console_says_each_restart_and_counts_them_on_the_component_line(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    state = RunState(tmp_path, clock=clock)
    out = io.StringIO()
    PlainConsole(state, out)
    state.component("engine", "ready")
    state.component("trainer", "ready")
    # what the launcher tells of a crash: restarting, the restart, then the new process
    state.component("trainer", "restarting")
    state.restarted(crashed(-9, 1))
    assert components_text(state).plain == (
        "engine ready  trainer restarting, restarted 1x (last: exited with code -9, 14:02:11)  "
    )
    state.component("trainer", "starting")
    clock.now += 12
    state.component("trainer", "ready")
    state.restarted(crashed(3, 2))
    events = [line.split(" ", 1)[1] for line in out.getvalue().splitlines()]
    assert events == [
        "engine ready after 0s",
        "trainer ready after 0s",
        "trainer exited with code -9 (crash 1 of 5 in 300 s): restarting in 1 s",
        "trainer ready again, 12s after it exited",
        "trainer exited with code 3 (crash 2 of 5 in 300 s): restarting in 1 s",
    ]
    assert "restarted 2x (last: exited with code 3, 14:02:11)" in components_text(state).plain


def test_status_shows_restarts_beside_gvloop_up_only() -> None:
    rows = [
        ComponentStatus(name=name, url=f"http://127.0.0.1/{name}", state="ok", healthy=True)
        for name in ("engine", "trainer")
    ]
    restarted = {"trainer": ComponentRestarts(count=2, last_returncode=-9, last_at=AT)}

    def shown(restarts: dict[str, ComponentRestarts] | None) -> str:
        screen = Console(file=io.StringIO(), width=200)
        screen.print(status_table(rows, restarts))
        return screen.file.getvalue()

    beside_up = shown(restarted)
    assert "restarts" in beside_up
    (engine,) = [line for line in beside_up.splitlines() if "engine" in line]
    (trainer,) = [line for line in beside_up.splitlines() if "trainer" in line]
    assert engine.rstrip("│ ").endswith("0")
    assert "restarted 2x (last: exited with code -9, 14:02:11)" in trainer
    # beside docker compose (no gvloop up running): no column to guess
    assert "restarts" not in shown(None)
