"""Ports and process trees as the launcher and the servers see them: whether a port is free,
who holds it, whether a process tree serves it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from gvloop.launcher import free_ports
from services.processes import (
    INSTANCE_ENV,
    PortInUseError,
    check_port_free,
    exit_if_port_in_use,
    in_use_by,
    instance_id,
    serves_port,
)


@pytest.fixture
def listening() -> Iterator[int]:
    """A port this process listens on."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock.getsockname()[1]


class TestCheckPortFree:
    def test_a_free_port_passes(self) -> None:
        check_port_free("127.0.0.1", free_ports(1)[0], "set X")

    def test_a_port_in_use_names_its_holder_and_the_way_out(self, listening: int) -> None:
        with pytest.raises(PortInUseError) as refused:
            check_port_free("127.0.0.1", listening, "set GVLOOP_X_PORT")
        message = str(refused.value)
        assert message.startswith(f"port {listening} on 127.0.0.1 is already in use by ")
        assert f"pid {os.getpid()} (" in message and f"stop it (kill {os.getpid()})" in message
        assert message.endswith(", or set GVLOOP_X_PORT")

    @pytest.mark.skipif(sys.platform != "linux", reason="BSD sockets let the two coexist")
    def test_the_wildcard_address_conflicts_with_loopback(self, listening: int) -> None:
        # a server on 0.0.0.0 could not start beside one on 127.0.0.1
        with pytest.raises(PortInUseError):
            check_port_free("0.0.0.0", listening, "set X")

    def test_a_closed_server_port_is_free_again(self) -> None:
        # its accepted connection lingers in TIME_WAIT, which a new server may reuse
        with socket.create_server(("127.0.0.1", 0)) as server:
            port = server.getsockname()[1]
            with socket.create_connection(("127.0.0.1", port)):
                accepted, _ = server.accept()
                accepted.close()
        check_port_free("127.0.0.1", port, "set X")

    def test_exit_is_one_line_and_code_2(
        self, listening: int, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with pytest.raises(SystemExit) as exited:
            exit_if_port_in_use("127.0.0.1", listening, "set X")
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: port {listening}") and err.count("\n") == 1


class TestServesPort:
    def test_this_process(self, listening: int) -> None:
        assert serves_port(os.getpid(), listening)
        assert not serves_port(os.getpid(), free_ports(1)[0])

    def test_a_child_serves_for_its_parent_not_the_other_way(self) -> None:
        port = free_ports(1)[0]
        script = (
            "import socket, time; "
            f"s = socket.create_server(('127.0.0.1', {port})); print('up', flush=True); "
            "time.sleep(60)"
        )
        child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
        try:
            assert child.stdout is not None and child.stdout.readline() == b"up\n"
            assert serves_port(os.getpid(), port) and serves_port(child.pid, port)
            with socket.create_server(("127.0.0.1", 0)) as mine:
                assert not serves_port(child.pid, mine.getsockname()[1])
        finally:
            child.kill()
            child.wait()

    def test_a_gone_process_serves_nothing(self, listening: int) -> None:
        child = subprocess.Popen([sys.executable, "-c", "pass"])
        child.wait()
        assert not serves_port(child.pid, listening)


def test_in_use_by_a_port_nobody_holds() -> None:
    assert in_use_by(free_ports(1)[0]) == ": stop the server on it"


def test_instance_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(INSTANCE_ENV, raising=False)
    assert instance_id() is None
    monkeypatch.setenv(INSTANCE_ENV, "abc")
    assert instance_id() == "abc"
