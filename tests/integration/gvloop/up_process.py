"""A `gvloop up` process run as a user runs it (no terminal, on its own ports and data
directory, away from the repository's .env), its output collected as it comes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from gvloop.topology import StackPorts


def stack_env(data_dir: Path, ports: StackPorts) -> dict[str, str]:
    """The environment of a stack on `ports` and `data_dir`, and of commands that talk to it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GVLOOP_")}
    return env | {
        "GVLOOP_DATA_DIR": str(data_dir),
        "GVLOOP_ENGINE_PORT": str(ports.engine),
        "GVLOOP_GENERATOR_PORT": str(ports.generator),
        "GVLOOP_VERIFIER_PORT": str(ports.verifier),
        "GVLOOP_TRAINER_METRICS_PORT": str(ports.trainer_metrics),
        "GVLOOP_TRAINER_PROGRESS": "off",
    }


class Up:
    """A `gvloop up` process; its output is collected as it comes."""

    def __init__(
        self,
        model: Path,
        data_dir: Path,
        ports: StackPorts,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        """`args`: more options of `gvloop up`; `env`: more variables."""
        self.env = stack_env(data_dir, ports) | (env or {})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gvloop", "up", "--model", str(model), *args],
            env=self.env,
            cwd=data_dir.parent,  # no ./.env of the repository
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout_s: float = 600) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(text in line for line in self.lines):
            code = self.process.poll()
            assert code is None, f"gvloop up exited with {code}:\n{self.output[-3000:]}"
            assert time.monotonic() < deadline, f"no {text!r} in {timeout_s}s:\n{self.output}"
            time.sleep(0.5)

    def finish(self, timeout_s: float = 120) -> int:
        code = self.process.wait(timeout_s)
        self._reader.join(5)
        return code

    def tree(self) -> list[psutil.Process]:
        """Every process under it now."""
        return psutil.Process(self.process.pid).children(recursive=True)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.finish()
