"""When `gvloop up` restarts a component that died, as docker compose's `restart:` does: the
settings, the growing wait before each restart, and the record of restarts that `gvloop status`
reads while the run goes on."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
from pydantic import BaseModel, Field, ValidationError
from pydantic_settings import BaseSettings

from services.settings import env_config

RECORD_NAME = "gvloop-up-restarts.json"


class RestartSettings(BaseSettings):
    model_config = env_config("GVLOOP_RESTART_")

    max: int = Field(default=5, ge=0)
    """Crashes of one component within GVLOOP_RESTART_WINDOW_S that `gvloop up` restarts it
    after, the others serving on; one more stops every component. 0: the first crash stops
    every component. A component that dies before it was first ready is never restarted."""
    window_s: float = Field(default=300.0, gt=0)
    """Seconds a crash counts against GVLOOP_RESTART_MAX for."""
    backoff_s: float = Field(default=1.0, gt=0)
    """Wait before restarting after a component's first crash in the window; each further
    crash in the window doubles it."""
    backoff_max_s: float = Field(default=30.0, gt=0)
    """The longest wait before a restart."""

    def delay_s(self, crash: int) -> float:
        """Seconds between the `crash`-th crash within the window and the restart after it."""
        assert crash >= 1
        return min(self.backoff_s * 2 ** (crash - 1), self.backoff_max_s)


class Restart(BaseModel):
    """A component seen dead and restarted after `delay_s`."""

    component: str
    returncode: int
    at: float
    """When it was seen dead, in seconds since the epoch."""
    crash: int
    """Its crashes within the window, this one included."""
    max: int
    window_s: float
    delay_s: float

    @property
    def line(self) -> str:
        return (
            f"{self.component} exited with code {self.returncode} (crash {self.crash} of "
            f"{self.max} in {self.window_s:g} s): restarting in {self.delay_s:g} s"
        )


class ComponentRestarts(BaseModel):
    count: int
    last_returncode: int
    last_at: float
    """Seconds since the epoch."""

    def summary(self) -> str:
        at = time.strftime("%H:%M:%S", time.localtime(self.last_at))
        return f"restarted {self.count}x (last: exited with code {self.last_returncode}, {at})"


class RestartRecord(BaseModel):
    """`<data_dir>/gvloop-up-restarts.json`, written by the `gvloop up` holding that data
    directory while it runs."""

    pid: int
    """The `gvloop up` that wrote it: once it is gone, so is what the record says."""
    components: dict[str, ComponentRestarts] = {}
    """Only those restarted at least once."""

    def save(self, data_dir: Path) -> None:
        # a reader never sees half a file
        temp = data_dir / f".{RECORD_NAME}.{os.getpid()}"
        temp.write_text(self.model_dump_json())
        temp.replace(data_dir / RECORD_NAME)

    @classmethod
    def read(cls, data_dir: Path) -> RestartRecord | None:
        """The record of the `gvloop up` running on `data_dir`; None when none runs there (or
        the stack runs under docker compose, which counts its own restarts)."""
        try:
            record = cls.model_validate_json((data_dir / RECORD_NAME).read_text())
        except (FileNotFoundError, ValidationError):
            return None
        # a run killed by SIGKILL leaves its record behind
        return record if psutil.pid_exists(record.pid) else None

    @staticmethod
    def remove(data_dir: Path) -> None:
        (data_dir / RECORD_NAME).unlink(missing_ok=True)
