"""The pipeline the soak runs: the components `gvloop up` runs, under one launcher that restarts
what dies (with backoff, as `gvloop up` does), beside a Redis of the soak's own (append-only,
fsync always) given to them as GVLOOP_REDIS_URL, so that the soak can SIGKILL and restart it."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import psutil

from gvloop.launcher import Launcher
from gvloop.restarts import Restart, RestartSettings
from gvloop.stack import local_components
from gvloop.topology import StackTopology
from services.redis_server import EmbeddedRedis

logger = logging.getLogger("soak")

GENERATOR_TOKEN = "soak-client-token"
OPERATOR_TOKEN = "soak-operator-token"
VERIFIER_TOKEN = "soak-verifier-token"
SUPERVISE_POLL_S = 0.5
COMPONENTS = ("engine", "verifier", "generator", "trainer")


class SoakStack:
    """Redis, then the four components; `supervise` keeps the launcher's restarts going (what
    `gvloop up`'s loop does), `pid`/`kill`/`signal` act on one component by name."""

    def __init__(
        self,
        model: str,
        data_dir: Path,
        log_dir: Path,
        env: dict[str, str],
        restarts: RestartSettings,
    ) -> None:
        self.data_dir = data_dir
        self.topology = StackTopology.free()
        self.redis = EmbeddedRedis(data_dir / "redis", appendfsync="always")
        self.restarts: list[Restart] = []
        self.launcher = Launcher(
            log_dir, echo=False, restart=restarts, on_restart=self.restarts.append
        )
        tokens = {
            "GVLOOP_GENERATOR_API_TOKEN": GENERATOR_TOKEN,
            "GVLOOP_GENERATOR_OPERATOR_TOKEN": OPERATOR_TOKEN,
            "GVLOOP_TRAINER_GENERATOR_TOKEN": OPERATOR_TOKEN,
            "GVLOOP_VERIFIER_API_TOKEN": VERIFIER_TOKEN,
            "GVLOOP_GENERATOR_VERIFIER_TOKEN": VERIFIER_TOKEN,
        }
        self._model, self._env = model, {**tokens, **env}
        self.failure: BaseException | None = None
        """What stopped the supervisor: a component that died more often than restarts allow."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="soak-supervise", daemon=True)
        self._lock = threading.Lock()

    def start(self) -> None:
        """Redis, then engine and verifier loading together, then the generator, the trainer."""
        self.redis.start()
        components = local_components(
            self._model, self.redis.url, self.data_dir, self.topology, self._env
        )
        for component in components:
            self.launcher.start(component)
            if component.name != "engine":  # the engine loads while the verifier does
                self.launcher.wait_ready()
        self._thread.start()

    def _supervise(self) -> None:
        while not self._stop.wait(SUPERVISE_POLL_S):
            try:
                with self._lock:
                    self.launcher.check()
            except Exception as exc:  # a component past its restarts: the soak fails on it
                logger.error("supervisor stopped: %s", exc)
                self.failure = exc
                return

    def ready(self, name: str) -> bool:
        """Whether the component runs and answered its health check since its last start."""
        return any(r.component.name == name and r.ready for r in self.launcher.running)

    def all_ready(self) -> bool:
        return self.redis.is_running() and all(self.ready(n) for n in COMPONENTS)

    def pid(self, name: str) -> int | None:
        """The component's process (its group leader) now; None while it waits to restart."""
        for run in self.launcher.running:
            if run.component.name == name and run.restart_at is None:
                return run.process.pid if run.process.poll() is None else None
        return None

    def signal(self, name: str, sig: signal.Signals) -> int | None:
        """Send `sig` to the component's whole process group (vLLM's engine core with the
        engine); returns the pid signalled (None: not running)."""
        pid = self.pid(name)
        if pid is not None:
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                return None
        return pid

    def processes(self, name: str) -> list[psutil.Process]:
        """The component's process and all its descendants (torch workers, vLLM's engine core)."""
        pid = self.pid(name)
        if pid is None:
            return []
        try:
            parent = psutil.Process(pid)
            return [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def url(self, name: str) -> str:
        endpoint = "trainer_metrics" if name == "trainer" else name
        return str(getattr(self.topology, endpoint).url)

    def wait_all_ready(self, timeout_s: float) -> bool:
        """Wait until Redis and every component serve (restarts done); False at the deadline."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.failure is not None:
                return False
            if self.all_ready() and self._generator_answers():
                return True
            time.sleep(0.5)
        return False

    def _generator_answers(self) -> bool:
        try:
            return httpx.get(f"{self.url('generator')}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        """Stop supervising, then every component (the trainer checkpoints on SIGTERM), then
        Redis last, so that the trainer's final acknowledgements land."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        # a component left stopped by a fault would ignore SIGTERM
        for name in COMPONENTS:
            self.signal(name, signal.SIGCONT)
        self.launcher.stop_all()
        self.redis.stop()
