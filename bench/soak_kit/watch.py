"""What the soak samples while it runs, each on its own clock: every component's memory and
open descriptors (its whole process tree: vLLM's engine core, the trainer's workers) and the
data directory's size; the version agent A serves; and every checkpoint the trainer writes,
read as soon as it appears (before the trainer prunes it), with its commit record and whether
it would load."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from agent_a.checkpoints import read_layout
from bench.soak_kit.stack import COMPONENTS, OPERATOR_TOKEN, SoakStack
from trainer import ckpt

logger = logging.getLogger("soak")


@dataclass
class Usage:
    at: float
    """time.time()."""
    component: str
    pid: int
    """The component's process (group leader): a restart starts a new series."""
    rss: int
    """Bytes, summed over the process tree."""
    fds: int
    ready: bool = True
    """Healthy since its start: before that it is loading, and its memory says nothing."""


@dataclass
class Commit:
    """One checkpoint as the watcher found it."""

    path: str
    step: int
    version: int
    committed_ids: list[str]
    seen_at: float
    problem: str | None
    """Why it would not load (None: it would)."""


@dataclass
class Watch:
    usage: list[Usage] = field(default_factory=list)
    disk: list[tuple[float, int]] = field(default_factory=list)
    """(time, bytes) of the data directory without its logs (which grow with the requests)."""
    served: list[tuple[float, int]] = field(default_factory=list)
    """(time, version) that GET /weights answered."""
    commits: list[Commit] = field(default_factory=list)


def tree_usage(processes: list[psutil.Process]) -> tuple[int, int]:
    rss = fds = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            rss += process.memory_info().rss
            fds += process.num_fds()
    return rss, fds


def dir_bytes(root: Path, skip: str = "logs") -> int:
    total = 0
    for path, dirs, files in os.walk(root):
        if Path(path) == root and skip in dirs:
            dirs.remove(skip)
        for name in files:
            with contextlib.suppress(OSError):  # a checkpoint pruned meanwhile
                total += os.lstat(os.path.join(path, name)).st_size
    return total


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint would not load (its state, every weights file whole); None: it would."""
    try:
        ckpt.read_state(path)
        read_layout(path)
    except Exception as exc:  # any failure to read is the finding
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return None


class Watcher:
    def __init__(self, stack: SoakStack, checkpoint_root: Path, usage_every_s: float) -> None:
        self.stack = stack
        self.checkpoint_root = checkpoint_root
        self.usage_every_s = usage_every_s
        self.watch = Watch()
        self._seen: set[tuple[str, float]] = set()
        self.first_commit = asyncio.Event()
        """Set once a checkpoint was read: the loop has gone round once."""

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.gather(self._usage(stop), self._served(stop), self._checkpoints(stop))

    async def _usage(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.to_thread(self.sample_usage)
            await _wait(stop, self.usage_every_s)

    def sample_usage(self) -> None:
        now = time.time()
        for name in COMPONENTS:
            processes = self.stack.processes(name)
            if processes:
                rss, fds = tree_usage(processes)
                ready = self.stack.ready(name)
                self.watch.usage.append(Usage(now, name, processes[0].pid, rss, fds, ready))
        redis = self.stack.redis.process
        if redis is not None and redis.poll() is None:
            rss, fds = tree_usage([psutil.Process(redis.pid)])
            self.watch.usage.append(Usage(now, "redis", redis.pid, rss, fds))
        self.watch.disk.append((now, dir_bytes(self.stack.data_dir)))

    async def _served(self, stop: asyncio.Event) -> None:
        headers = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
        async with httpx.AsyncClient(base_url=self.stack.url("generator"), timeout=10) as http:
            while not stop.is_set():
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                    answer = await http.get("/weights", headers=headers)
                    if answer.status_code == 200:
                        self.watch.served.append((time.time(), int(answer.json()["version"])))
                await _wait(stop, 2.0)

    async def _checkpoints(self, stop: asyncio.Event) -> None:
        # often: the trainer keeps only its newest few, and each one's commit record counts
        while not stop.is_set():
            await asyncio.to_thread(self.read_checkpoints)
            if self.watch.commits:
                self.first_commit.set()
            await _wait(stop, 0.25)
        await asyncio.to_thread(self.read_checkpoints)

    def read_checkpoints(self) -> None:
        for path in ckpt.list_checkpoints(self.checkpoint_root):
            try:
                key = (path.name, (path / ckpt.STATE_JSON).stat().st_mtime)
            except OSError:
                continue  # pruned between the listing and now
            if key in self._seen:
                continue
            self._seen.add(key)
            try:
                state = ckpt.read_state(path)
            except OSError:
                continue
            except ValueError as exc:
                self.watch.commits.append(
                    Commit(str(path), -1, -1, [], time.time(), f"state: {exc}")
                )
                continue
            problem = checkpoint_problem(path)
            if problem is not None and not path.exists():
                problem = None  # pruned while read, not broken
            commit = Commit(
                str(path),
                state.step,
                state.version,
                list(state.committed_ids),
                time.time(),
                problem,
            )
            self.watch.commits.append(commit)

    def newest_problem(self) -> str | None:
        """Whether the newest checkpoint on disk now would load (None: it would, or none yet)."""
        newest = ckpt.latest_checkpoint(self.checkpoint_root)
        if newest is None:
            return None
        problem = checkpoint_problem(newest)
        if problem is not None and not newest.exists():
            return None  # pruned while read: a newer one is there now
        return f"{newest.name}: {problem}" if problem else None


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
