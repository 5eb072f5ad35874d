"""What `gvloop up` checks before it starts anything: that no other run holds its data
directory, and that every port it will listen on is free. Either failure is one error naming the
other run's pid, or the port and who holds it, and how to free it."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType
from typing import IO

from gvloop.topology import StackTopology
from services.processes import check_port_free

LOCK_NAME = "gvloop-up.lock"


class DataDirLockedError(RuntimeError):
    pass


class RunLock:
    """An exclusive lock on `<data_dir>/gvloop-up.lock`, which holds the owner's pid. The
    kernel drops it when its process ends, however it ends: a killed run leaves no stale lock."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_NAME
        self._file: IO[str] | None = None

    def acquire(self) -> RunLock:
        """Take the lock, or raise DataDirLockedError naming the run that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "a+", encoding="utf-8")  # held open: the lock lives with it
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            owner = file.read().strip() or "unknown"  # it may not have written its pid yet
            file.close()
            raise DataDirLockedError(
                f"another gvloop up (pid {owner}) is running on {self.path.parent}: stop it "
                f"(Ctrl-C in its terminal, or kill {owner}), or set GVLOOP_DATA_DIR to another "
                "directory"
            ) from None
        file.truncate(0)
        file.write(f"{os.getpid()}\n")
        file.flush()
        self._file = file
        return self

    def release(self) -> None:
        """Drop the lock. The file stays: a run that opened it just before its removal would
        lock the old file while the next run locks a new one, both "holding" the lock."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def check_ports(topology: StackTopology) -> None:
    """Raise PortInUseError for the first port of the stack a server already listens on, on
    the address its component will listen on."""
    for endpoint in topology.listeners:
        check_port_free(
            endpoint.host, endpoint.port, f"set {endpoint.port_setting} to another port"
        )
