"""The soak's faults: what each kind does to the running stack, and when, from the seed.

Every kind comes once, in an order drawn from the seed, before any comes twice (a short run
still meets as many kinds as fit), then kinds are drawn at random. A fault is injected only
once the stack has come back from the one before (every component healthy again, or a
deadline), after a random gap: faults overlap in time only through what they leave behind
(a backlog, a lost delivery, a checkpoint that failed), which is what a long run meets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import resource
import shutil
import signal
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import httpx

from bench.soak_kit.stack import OPERATOR_TOKEN, SoakStack

logger = logging.getLogger("soak")

FaultKind = Literal[
    "trainer_kill",
    "engine_kill",
    "redis_kill",
    "verifier_stop",
    "generator_kill",
    "disk_full",
    "corrupt_swap",
]
KINDS: tuple[FaultKind, ...] = get_args(FaultKind)
# room the trainer's metrics file keeps while the disk is "full": its JSON lines (the skip
# records the accounting reads) must still land; a checkpoint's weights file must not
METRICS_ROOM_BYTES = 4 * 2**20


@dataclass
class Fault:
    kind: FaultKind
    started: float
    """time.time() when injected."""
    ended: float = 0.0
    """time.time() when the fault was taken away (a kill: when sent; a stop: the SIGCONT)."""
    detail: str = ""
    injected: bool = True
    """False when it could not be done (the component was restarting): not counted."""
    problems: list[str] = field(default_factory=list)
    """Invariants this fault broke at once (a corrupt checkpoint served, ...)."""


def ignores_sigxfsz(pid: int) -> bool:
    """Whether the process ignores SIGXFSZ (CPython does from start-up): otherwise a write over
    the limit kills it instead of failing. (The check `tests/utils/disk.py` makes: bench/
    imports nothing from tests/.)"""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGXFSZ - 1) & 1)
    return False


def plan(seed: int, kinds: tuple[FaultKind, ...] = KINDS) -> Iterator[FaultKind]:
    """Each kind once in a seeded order, then seeded random kinds for ever."""
    rng = random.Random(seed)
    first = list(kinds)
    rng.shuffle(first)
    yield from first
    while True:
        yield rng.choice(kinds)


class Injector:
    def __init__(
        self,
        stack: SoakStack,
        checkpoint_root: Path,
        model_dir: Path,
        metrics_file: Path,
        rng: random.Random,
        stop_s: tuple[float, float] = (8.0, 20.0),
        disk_full_s: tuple[float, float] = (10.0, 30.0),
    ) -> None:
        self.stack = stack
        self.checkpoint_root = checkpoint_root
        self.model_dir = model_dir
        self.metrics_file = metrics_file
        self.rng = rng
        self.stop_s = stop_s
        self.disk_full_s = disk_full_s
        self._corrupt = 0

    async def inject(self, kind: FaultKind) -> Fault:
        fault = Fault(kind, time.time())
        logger.info("fault: %s", kind)
        match kind:
            case "trainer_kill" | "engine_kill" | "generator_kill":
                name = kind.removesuffix("_kill")
                pid = self.stack.signal(name, signal.SIGKILL)
                fault.injected = pid is not None
                fault.detail = f"SIGKILL {name} (pid {pid}); the launcher restarts it"
            case "redis_kill":
                await asyncio.to_thread(self.stack.redis.kill)
                down_s = self.rng.uniform(1.0, 4.0)
                await asyncio.sleep(down_s)
                await asyncio.to_thread(self.stack.redis.start)
                fault.detail = f"SIGKILL redis, restarted after {down_s:.1f}s"
            case "verifier_stop":
                await self._stop_verifier(fault)
            case "disk_full":
                await self._fill_disk(fault)
            case "corrupt_swap":
                await self._corrupt_swap(fault)
        fault.ended = time.time()
        return fault

    async def _stop_verifier(self, fault: Fault) -> None:
        seconds = self.rng.uniform(*self.stop_s)
        pid = self.stack.signal("verifier", signal.SIGSTOP)
        fault.injected = pid is not None
        try:
            await asyncio.sleep(seconds)
        finally:
            self.stack.signal("verifier", signal.SIGCONT)
        fault.detail = f"SIGSTOP verifier for {seconds:.1f}s, then SIGCONT"

    async def _fill_disk(self, fault: Fault) -> None:
        """The trainer's processes may write no file past a size: its checkpoint's weights do
        not fit, its metrics' JSON lines still do. Raising the limit back is space returning."""
        seconds = self.rng.uniform(*self.disk_full_s)
        size = self.metrics_file.stat().st_size if self.metrics_file.exists() else 0
        limit = size + METRICS_ROOM_BYTES
        limited: dict[int, tuple[int, int]] = {}
        for process in self.stack.processes("trainer"):
            # a process that does not ignore SIGXFSZ would be killed, not refused
            with contextlib.suppress(OSError):
                if ignores_sigxfsz(process.pid):
                    soft, hard = resource.prlimit(process.pid, resource.RLIMIT_FSIZE)
                    resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (limit, hard))
                    limited[process.pid] = (soft, hard)
        fault.injected = bool(limited)
        try:
            await asyncio.sleep(seconds)
        finally:
            for pid, old in limited.items():
                with contextlib.suppress(OSError):  # it died meanwhile
                    resource.prlimit(pid, resource.RLIMIT_FSIZE, old)
        fault.detail = (
            f"RLIMIT_FSIZE {limit / 2**20:.1f} MiB on trainer pids {sorted(limited)} "
            f"for {seconds:.1f}s"
        )

    async def _corrupt_swap(self, fault: Fault) -> None:
        """POST /weights with a checkpoint whose weights file is cut short, under a version far
        ahead: agent A must refuse it (or roll back) and keep serving what it served."""
        self._corrupt += 1
        target = self.checkpoint_root / f"soak-corrupt-{self._corrupt}"
        await asyncio.to_thread(truncated_copy, self.model_dir, target)
        headers = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
        url = self.stack.url("generator")
        try:
            async with httpx.AsyncClient(base_url=url, timeout=180) as http:
                before = (await http.get("/weights", headers=headers)).json()["version"]
                body = {"checkpoint_dir": str(target), "version": before + 1000}
                answer = await http.post("/weights", json=body, headers=headers)
                after = (await http.get("/weights", headers=headers)).json()["version"]
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            fault.injected = False
            fault.detail = f"agent A did not answer ({type(exc).__name__})"
            return
        finally:
            shutil.rmtree(target, ignore_errors=True)
        detail = answer.text[:160].replace("\n", " ")
        fault.detail = f"POST /weights v{before + 1000} -> {answer.status_code}; served {after}"
        if answer.is_success:
            fault.problems.append(f"a truncated checkpoint was accepted: {detail}")
        if after < before:
            fault.problems.append(f"served version went back from {before} to {after}")


def truncated_copy(model_dir: Path, target: Path) -> None:
    """`model_dir` with each weights file cut off a little past its header: the names and
    shapes are right, the data is missing, as after a crash in the middle of a copy."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for source in model_dir.iterdir():
        if source.is_dir():
            continue
        if source.suffix != ".safetensors":
            shutil.copy2(source, target / source.name)  # config and tokenizer: small
            continue
        with source.open("rb") as f:
            head = f.read(8)
            (length,) = struct.unpack("<Q", head)
            kept = f.read(length + 4096)
        (target / source.name).write_bytes(head + kept)
