"""The checks `gvloop up` makes before it starts anything: one run per data directory, and
every port of the stack free."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from gvloop.preflight import LOCK_NAME, DataDirLockedError, RunLock, check_ports
from gvloop.topology import StackPorts, StackTopology
from services.processes import PortInUseError


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    """A server socket of this process on a free loopback port."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock


class TestRunLock:
    def test_holds_the_owner_pid(self, tmp_path: Path) -> None:
        with RunLock(tmp_path):
            assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"

    def test_a_second_run_is_refused_naming_the_first(self, tmp_path: Path) -> None:
        # flock locks belong to an open file, so a second open in one process is refused too
        with RunLock(tmp_path), pytest.raises(DataDirLockedError) as refused:
            RunLock(tmp_path).acquire()
        message = str(refused.value)
        assert f"pid {os.getpid()}" in message and f"kill {os.getpid()}" in message
        assert str(tmp_path) in message and "GVLOOP_DATA_DIR" in message

    def test_released_on_exit(self, tmp_path: Path) -> None:
        with RunLock(tmp_path):
            pass
        with RunLock(tmp_path):
            pass

    def test_the_file_of_a_killed_run_does_not_hold(self, tmp_path: Path) -> None:
        # a run killed hard leaves its file and pid behind, but the kernel dropped its lock
        (tmp_path / LOCK_NAME).write_text("999999\n")
        with RunLock(tmp_path):
            assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"

    def test_makes_the_data_directory(self, tmp_path: Path) -> None:
        with RunLock(tmp_path / "new"):
            assert (tmp_path / "new" / LOCK_NAME).exists()


class TestCheckPorts:
    def test_free_ports_pass(self) -> None:
        check_ports(StackTopology.free())

    @pytest.mark.parametrize(
        ("field", "setting"),
        [
            ("engine", "GVLOOP_ENGINE_PORT"),
            ("generator", "GVLOOP_GENERATOR_PORT"),
            ("verifier", "GVLOOP_VERIFIER_PORT"),
            ("trainer_metrics", "GVLOOP_TRAINER_METRICS_PORT"),
        ],
    )
    def test_a_port_in_use_is_named_with_its_holder_and_setting(
        self, listening: socket.socket, field: str, setting: str
    ) -> None:
        port = listening.getsockname()[1]
        ports = StackPorts.free().model_copy(update={field: port})
        with pytest.raises(PortInUseError) as refused:
            check_ports(StackTopology.from_settings(ports))
        message = str(refused.value)
        assert message.startswith(f"port {port} on 127.0.0.1 is already in use by pid ")
        assert f"kill {os.getpid()}" in message and f"set {setting} to another port" in message

    def test_no_trainer_metrics_port_is_not_checked(self) -> None:
        # GVLOOP_TRAINER_METRICS_PORT=0: the trainer serves no metrics
        ports = StackPorts.free().model_copy(update={"trainer_metrics": 0})
        check_ports(StackTopology.from_settings(ports))
