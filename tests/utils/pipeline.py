"""The pipeline as local processes for fault tests: the components `gvloop.stack` wires, each
under its own Launcher, so a test can kill, stop or restart one while the others run."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from gvloop.launcher import Component, Launcher
from gvloop.stack import local_components
from gvloop.topology import StackTopology
from services.queue import PAYLOAD
from services.redis_server import EmbeddedRedis, connect
from services.schemas import Sample
from services.settings import CommonSettings
from tests.utils.waits import until
from trainer import ckpt


class LocalStack:
    """Components by name; `start`, `kill`, `stop` act on one, `close` on all."""

    def __init__(
        self,
        components: list[Component],
        data_dir: Path,
        redis: EmbeddedRedis,
        topology: StackTopology,
    ) -> None:
        self.components = {c.name: c for c in components}
        self.data_dir = data_dir
        self.redis = redis
        self.topology = topology
        self.launchers: dict[str, Launcher] = {}

    def url(self, name: str) -> str:
        endpoint = "trainer_metrics" if name == "trainer" else name
        return getattr(self.topology, endpoint).url

    def events(self, kind: str) -> list[dict]:
        """The trainer's JSON-lines records of this kind (step, checkpoint, swap, skip)."""
        path = self.data_dir / "trainer" / "metrics.jsonl"
        if not path.exists():
            return []
        records = (json.loads(line) for line in path.read_text().splitlines() if line)
        return [r for r in records if r["event"] == kind]

    def log(self, name: str) -> str:
        path = self.data_dir / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, *names: str, env: dict[str, str] | None = None) -> None:
        """Start these components together (they load in parallel), then wait for health."""
        for name in names:
            component = self.components[name]
            if env:
                component = replace(component, env={**component.env, **env})
            launcher = Launcher(self.data_dir / "logs", echo=False)
            launcher.start(component)
            self.launchers[name] = launcher
        for name in names:
            self.launchers[name].wait_ready()

    def running(self, name: str) -> bool:
        return name in self.launchers

    def pid(self, name: str) -> int:
        return self.launchers[name].running[0].process.pid

    def kill(self, name: str) -> None:
        """SIGKILL the component's process group, as a crash or the OOM killer would."""
        launcher = self.launchers.pop(name)
        run = launcher.running[0]
        try:
            os.killpg(run.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        run.process.wait(30)
        launcher.running.clear()

    def stop(self, name: str) -> None:
        """SIGTERM, then SIGKILL what outlives the launcher's grace period."""
        self.launchers.pop(name).stop_all()

    def check(self) -> None:
        """Raise ComponentDiedError if a running component exited."""
        for launcher in self.launchers.values():
            launcher.check()

    def close(self) -> None:
        for name in reversed(list(self.launchers)):
            self.stop(name)


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]],
    what: str,
    stack: LocalStack,
    timeout_s: float = 180,
    poll_s: float = 0.2,
) -> None:
    """Poll until `condition` holds; fail naming `what` at the deadline or if a component died."""
    await until(condition, what, timeout_s, poll_s, check=stack.check)


def common(stack: LocalStack) -> CommonSettings:
    """The shared settings the stack's components read."""
    return CommonSettings(_env_file=None, data_dir=stack.data_dir)  # type: ignore[call-arg]


async def stream_samples(stack: LocalStack) -> list[Sample]:
    """Every sample in the stream now (each must parse: feedback and all)."""
    client = connect(stack.redis.url)
    try:
        entries = await client.xrange(common(stack).stream)
    finally:
        await client.aclose()
    return [Sample.model_validate_json(fields[PAYLOAD.encode()]) for _, fields in entries]


def newly_committed(checkpoint_root: Path) -> list[list[str]]:
    """Per trainer checkpoint, oldest first, the stream ids it commits that the one before did
    not: what its steps trained on (or skipped). Needs every checkpoint kept."""
    result, before = [], set()
    for path in ckpt.list_checkpoints(checkpoint_root):
        ids = set(ckpt.read_state(path).committed_ids)
        result.append(sorted(ids - before))
        before = ids
    return result


@contextmanager
def local_stack(
    model_dir: Path, data_dir: Path, env: dict[str, str], start: tuple[str, ...]
) -> Iterator[LocalStack]:
    """A private Redis and the pipeline's components (those named in `start` started)."""
    topology = StackTopology.free()
    with EmbeddedRedis(data_dir / "redis") as redis:
        components = local_components(str(model_dir), redis.url, data_dir, topology, env)
        stack = LocalStack(components, data_dir, redis, topology)
        try:
            if start:
                stack.start(*start)
            yield stack
        finally:
            stack.close()
