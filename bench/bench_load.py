"""Load benchmark: concurrent clients against the local pipeline (loopback only), bounded in
time and requests, in three phases on one running stack:

  baseline  1 client, the trainer running      (the reference for the ratios)
  load      N clients, no trainer              (the queue fills to its bound: 429s)
  drain     N clients, the trainer running     (the queue drains; 429s stop)

Per phase: requests, served, samples/s and its ratio to the baseline, p50/p95 latency of
served requests, errors by kind; then the queue depth over time. Clients do not retry: a 429
is counted, then the client waits its Retry-After (at most 1 s) as a polite client would.

    python bench/bench_load.py --model DIR --clients 8 --duration 30
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import httpx
import typer

from gvloop.launcher import Component, Launcher
from gvloop.problems import PROBLEM_SETS, load_problems
from gvloop.stack import local_components
from gvloop.topology import StackTopology
from services.logs import setup_logging
from services.model_files import DEFAULT_MODEL, prepare_default_model
from services.redis_server import EmbeddedRedis, connect
from services.settings import CommonSettings


@dataclass
class Phase:
    name: str
    clients: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    samples: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)

    @property
    def requests(self) -> int:
        return sum(self.outcomes.values())

    @property
    def rate(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0


async def client(
    http: httpx.AsyncClient, phase: Phase, body: dict, end: float, budget: list[int]
) -> None:
    """Post back to back until the phase's time or the run's request budget is spent."""
    while time.monotonic() < end and budget[0] > 0:
        budget[0] -= 1
        started = time.monotonic()
        try:
            response = await http.post("/problems", json=body)
        except httpx.TimeoutException:
            phase.outcomes["timeout"] += 1
            continue
        except httpx.TransportError as exc:
            phase.outcomes[type(exc).__name__] += 1
            continue
        if response.status_code == 200:
            phase.outcomes["served"] += 1
            phase.latencies.append(time.monotonic() - started)
            phase.samples += sum(len(r["solutions"]) for r in response.json()["data"])
        else:
            phase.outcomes[str(response.status_code)] += 1
        if response.status_code == 429:
            retry_after = response.headers.get("retry-after", "1")
            await asyncio.sleep(min(1.0, float(retry_after) if retry_after.isdigit() else 1.0))


async def run_phase(
    url: str, phase: Phase, seconds: float, budget: list[int], problems: list[dict]
) -> None:
    end = time.monotonic() + seconds
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        bodies = [problems[i % len(problems)] for i in range(phase.clients)]
        await asyncio.gather(*(client(http, phase, b, end, budget) for b in bodies))
    phase.seconds = time.monotonic() - started


async def watch_depth(
    redis_url: str, stream: str, out: list[tuple[float, int]], stop: asyncio.Event
) -> None:
    """Sample the stream's length (the backlog the trainer has not committed) every 2 s."""
    client = connect(redis_url)
    started = time.monotonic()
    try:
        while not stop.is_set():
            out.append((time.monotonic() - started, await client.xlen(stream)))
            await asyncio.sleep(2.0)
    finally:
        await client.aclose()


def table(phases: list[Phase]) -> str:
    base = phases[0].rate or 1e-9
    lines = [
        "| phase | clients | s | requests | served | samples/s | x baseline | p50 s | p95 s "
        "| 429 | other errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in phases:
        lat = sorted(p.latencies)
        p50 = statistics.median(lat) if lat else float("nan")
        p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else float("nan")
        errors = {k: v for k, v in p.outcomes.items() if k not in ("served", "429")}
        lines.append(
            f"| {p.name} | {p.clients} | {p.seconds:.0f} | {p.requests} | {p.outcomes['served']} "
            f"| {p.rate:.2f} | {p.rate / base:.2f} | {p50:.2f} | {p95:.2f} | "
            f"{p.outcomes['429']} | {errors or 0} |"
        )
    return "\n".join(lines)


@dataclass
class Run:
    url: str
    redis_url: str
    stream: str
    trainer: Component
    log_dir: Path
    clients: int
    duration: float
    budget: list[int]
    problems: list[dict]


async def run_phases(run: Run) -> tuple[list[Phase], list[tuple[float, int]]]:
    """Baseline with the trainer, load without it, drain with it again; depth throughout."""
    phases = [Phase("baseline", 1), Phase("load, no trainer", run.clients)]
    phases.append(Phase("drain, trainer", run.clients))
    depth: list[tuple[float, int]] = []
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_depth(run.redis_url, run.stream, depth, stop))
    trainer = Launcher(run.log_dir, echo=False)
    try:
        await asyncio.to_thread(start_ready, trainer, run.trainer)
        await run_phase(run.url, phases[0], run.duration / 2, run.budget, run.problems)
        await asyncio.to_thread(trainer.stop_all)
        await run_phase(run.url, phases[1], run.duration, run.budget, run.problems)
        trainer.start(run.trainer)  # it loads while the clients keep asking
        await run_phase(run.url, phases[2], run.duration, run.budget, run.problems)
    finally:
        stop.set()
        await watcher
        await asyncio.to_thread(trainer.stop_all)
    return phases, depth


def start_ready(launcher: Launcher, component: Component) -> None:
    launcher.start(component)
    launcher.wait_ready()


def main(
    model: Annotated[str | None, typer.Option(help="Model dir; default GVLOOP_MODEL.")] = None,
    clients: Annotated[int, typer.Option(help="Concurrent clients in the load phases.")] = 8,
    duration: Annotated[float, typer.Option(help="Seconds per load phase.")] = 30,
    max_requests: Annotated[int, typer.Option(help="Request budget of the whole run.")] = 600,
    backlog: Annotated[int, typer.Option(help="Queue bound (GVLOOP_MAX_BACKLOG).")] = 48,
    max_tokens: Annotated[int, typer.Option(help="Tokens per sample.")] = 16,
) -> None:
    setup_logging("WARNING")
    common = CommonSettings()
    chosen = model or common.model
    model_path = str(prepare_default_model(common.data_dir)) if chosen == DEFAULT_MODEL else chosen
    problems = [
        {
            "problems": [p.model_dump(exclude={"id"})],
            "n": 2,
            "sampling": {"max_tokens": max_tokens, "temperature": 0.8},
        }
        for p in load_problems(PROBLEM_SETS["words"].train, limit=64)
    ]
    data_dir = Path(tempfile.mkdtemp(prefix="gvloop-bench-load-"))
    topology = StackTopology.free()
    env = {
        "GVLOOP_MAX_BACKLOG": str(backlog),
        "GVLOOP_TRAINER_BATCH_SIZE": "8",
        "GVLOOP_TRAINER_MICRO_BATCH_SIZE": "8",
        "GVLOOP_TRAINER_MAX_WAIT_S": "2",
        "GVLOOP_TRAINER_PROGRESS": "off",
    }
    started = time.monotonic()
    log_dir = data_dir / "logs"
    with EmbeddedRedis(data_dir / "redis") as redis, Launcher(log_dir, echo=False) as stack:
        components = local_components(model_path, redis.url, data_dir, topology, env)
        *services, trainer = components
        for component in services:
            stack.start(component)
            if component.name != "engine":  # the engine loads while the verifier does
                stack.wait_ready()
        print(f"stack up in {time.monotonic() - started:.0f}s; logs in {log_dir}")
        run = Run(
            topology.generator.url,
            redis.url,
            common.stream,
            trainer,
            log_dir,
            clients,
            duration,
            [max_requests],
            problems,
        )
        phases, depth = asyncio.run(run_phases(run))
    load, drain = phases[1], phases[2]
    server_errors = sum(v for p in phases for k, v in p.outcomes.items() if k.startswith("5"))
    print(f"\nmodel {model_path}; queue bound {backlog}; 1 problem x n=2 x {max_tokens} tokens")
    print(table(phases))
    print("\nqueue depth over time (s: samples in the stream):")
    print(", ".join(f"{t:.0f}: {d}" for t, d in depth))
    print(
        f"\n429s: {load.outcomes['429']} without the trainer, {drain.outcomes['429']} with it; "
        f"5xx: {server_errors}; requests {sum(p.requests for p in phases)} of {max_requests}; "
        f"wall {time.monotonic() - started:.0f}s"
    )


if __name__ == "__main__":
    typer.run(main)
