"""One soak run, start to end: the stack up, the load and the watcher running, faults injected
for the run's minutes, then the load stopped, the stack given time to recover and the trainer
to drain the stream, and everything accounted for."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.soak_kit import report
from bench.soak_kit.accounting import Accounting, account, read_skips
from bench.soak_kit.chaos import KINDS, Fault, FaultKind, Injector, plan
from bench.soak_kit.load import Load, read_log
from bench.soak_kit.stack import SoakStack
from bench.soak_kit.watch import Watcher
from gvloop.restarts import RestartSettings
from services.model_files import DEFAULT_MODEL, prepare_default_model
from services.redis_server import connect
from services.settings import CommonSettings

logger = logging.getLogger("soak")


@dataclass
class SoakConfig:
    minutes: float
    seed: int = 0
    model: str = DEFAULT_MODEL
    """`tiny` (a random 6.5M Llama, for tests), `default`, or a model directory."""
    faults: tuple[FaultKind, ...] = KINDS
    clients: int = 3
    timeout_s: float = 120.0
    """Each client request's limit: one past it hung."""
    max_tokens: int = 16
    gap_s: tuple[float, float] = (20.0, 90.0)
    """Seconds between one fault's recovery and the next fault, drawn uniformly."""
    stop_s: tuple[float, float] = (8.0, 20.0)
    """How long the verifier stays stopped, drawn uniformly."""
    disk_full_s: tuple[float, float] = (10.0, 30.0)
    """How long the checkpoint disk stays full, drawn uniformly."""
    recovery_timeout_s: float = 300.0
    drain_timeout_s: float = 300.0
    usage_every_s: float = 3.0
    warmup_s: float = 60.0
    """Each process' first seconds, left out of its memory slope (loading, first steps)."""
    growth_bound_pct: float = 5.0
    out_dir: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    """Extra settings for every component (over the soak's)."""


@dataclass
class SoakResult:
    run_dir: Path
    seconds: float
    faults: list[Fault]
    accounting: Accounting
    tables: str
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def injected(self) -> set[str]:
        return {f.kind for f in self.faults if f.injected}


def soak_env(run_dir: Path, data_dir: Path) -> dict[str, str]:
    """Small batches that checkpoint and swap every step (many commits, many swaps per minute),
    quick retries, every checkpoint kept long enough for the watcher to read it."""
    return {
        "GVLOOP_CHECKPOINT_DIR": str(data_dir / "checkpoints"),
        "GVLOOP_TRAINER_METRICS_FILE": str(run_dir / "trainer-metrics.jsonl"),
        "GVLOOP_ENGINE_KV_CACHE_GIB": "1",
        "GVLOOP_ENGINE_MAX_MODEL_LEN": "1024",
        "GVLOOP_VERIFIER_RULE_WORKERS": "1",
        "GVLOOP_GENERATOR_RETRY_ATTEMPTS": "3",
        "GVLOOP_GENERATOR_RETRY_BACKOFF_S": "0.2",
        "GVLOOP_GENERATOR_CONTROL_TIMEOUT_S": "10",
        "GVLOOP_GENERATOR_RELOAD_TIMEOUT_S": "60",
        # the load outruns a CPU trainer: the bound is reached and 429s are part of the run
        "GVLOOP_MAX_BACKLOG": "64",
        # deliveries whose reply a Redis crash lost come back after this (default 300 s)
        "GVLOOP_CLAIM_IDLE_S": "5",
        "GVLOOP_TRAINER_BATCH_SIZE": "8",
        "GVLOOP_TRAINER_MICRO_BATCH_SIZE": "8",
        "GVLOOP_TRAINER_MAX_WAIT_S": "2",
        "GVLOOP_TRAINER_CHECKPOINT_EVERY": "1",
        "GVLOOP_TRAINER_KEEP_CHECKPOINTS": "6",
        "GVLOOP_TRAINER_SWAP_MAX_BACKOFF_S": "5",
        "GVLOOP_TRAINER_CHECKPOINT_MAX_BACKOFF_S": "5",
        "GVLOOP_TRAINER_PROGRESS": "off",
    }


def resolve_model(model: str, run_dir: Path) -> Path:
    data_dir = CommonSettings().data_dir  # where the default model (and its tokenizer) is kept
    if model == "tiny":
        from gvloop.tiny_model import make_tiny_model

        return make_tiny_model(run_dir / "model", seed=0, data_dir=data_dir)
    if model == DEFAULT_MODEL:
        return prepare_default_model(data_dir)
    return Path(model)


def run_soak(config: SoakConfig) -> SoakResult:
    run_dir = config.out_dir or Path(tempfile.mkdtemp(prefix="gvloop-soak-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    data_dir = run_dir / "data"
    model_dir = resolve_model(config.model, run_dir)
    env = soak_env(run_dir, data_dir)
    if config.model == "tiny":
        env["GVLOOP_ENGINE_DTYPE"] = "float32"  # as the tiny model was written
    env.update(config.env)
    # restarts as `gvloop up` does them, with room for every kill a long run deals
    restarts = RestartSettings(max=20, window_s=600, backoff_s=1.0, backoff_max_s=10.0)
    stack = SoakStack(str(model_dir), data_dir, run_dir / "logs", env, restarts)
    started = time.monotonic()
    logger.info("soak: starting the stack in %s", run_dir)
    try:
        stack.start()
        logger.info("soak: stack up in %.0fs", time.monotonic() - started)
        return asyncio.run(
            _soak(config, stack, run_dir, model_dir, Path(env["GVLOOP_CHECKPOINT_DIR"]))
        )
    finally:
        stack.close()


async def _soak(
    config: SoakConfig, stack: SoakStack, run_dir: Path, model_dir: Path, checkpoint_root: Path
) -> SoakResult:
    t_start = time.time()
    rng = random.Random(config.seed)
    metrics_file = run_dir / "trainer-metrics.jsonl"
    load = Load(
        stack.url("generator"),
        run_dir / "clients.jsonl",
        config.clients,
        config.seed,
        config.timeout_s,
        config.max_tokens,
    )
    watcher = Watcher(stack, checkpoint_root, config.usage_every_s)
    injector = Injector(
        stack, checkpoint_root, model_dir, metrics_file, rng, config.stop_s, config.disk_full_s
    )
    faults: list[Fault] = []
    checkpoint_problems: list[str] = []
    problems: list[str] = []
    stop_load, stop_watch = asyncio.Event(), asyncio.Event()
    load_task = asyncio.create_task(load.run(stop_load))
    watch_task = asyncio.create_task(watcher.run(stop_watch))
    try:
        end_at = time.monotonic() + config.minutes * 60
        await _chaos(config, stack, injector, rng, end_at, faults, checkpoint_problems, watcher)
        stop_load.set()
        await load_task
        logger.info("soak: load stopped; waiting for the stack and the drain")
        if not await asyncio.to_thread(stack.wait_all_ready, config.recovery_timeout_s):
            problems.append(
                f"the stack was not all up {config.recovery_timeout_s:.0f}s after the run"
            )
        left, dead = await _drain(stack, config.drain_timeout_s)
        await asyncio.to_thread(watcher.read_checkpoints)
        if (problem := watcher.newest_problem()) is not None:
            checkpoint_problems.append(f"at the end: {problem}")
        if not watcher.watch.commits:
            problems.append("no checkpoint was written")
    finally:
        stop_load.set()
        stop_watch.set()
        await asyncio.gather(load_task, watch_task, return_exceptions=True)
    if stack.failure is not None:
        problems.append(f"the launcher gave up: {str(stack.failure).splitlines()[0]}")

    records = read_log(run_dir / "clients.jsonl")
    accounting = account(
        records,
        watcher.watch.commits,
        read_skips(metrics_file),
        dead,
        left,
        faults,
        watcher.watch.served,
        checkpoint_problems,
    )
    steps = _step_times(metrics_file)
    recoveries = [report.recovery(f, records, steps, watcher.watch.served) for f in faults]
    memory, files, disk = report.slopes(watcher.watch, config.warmup_s)
    min_span = max(60.0, config.minutes * 60 / 3)
    problems += accounting.problems
    problems += report.growth_problems(memory, files, disk, config.growth_bound_pct, min_span)
    restarts = {r.component for r in stack.restarts}
    tables = "\n\n".join(
        [
            report.fault_table(faults, recoveries),
            report.sample_table(accounting),
            report.request_table(accounting),
            report.usage_table(memory, files, disk),
            f"restarts by the launcher: {len(stack.restarts)} ({', '.join(sorted(restarts))}); "
            f"steps {len(steps)}; checkpoints read {len(watcher.watch.commits)}",
        ]
    )
    result = SoakResult(run_dir, time.time() - t_start, faults, accounting, tables, problems)
    # what the accounting read, for a second look at a run that failed
    (run_dir / "commits.jsonl").write_text(
        "".join(json.dumps(asdict(c)) + "\n" for c in watcher.watch.commits)
    )
    (run_dir / "faults.jsonl").write_text("".join(json.dumps(asdict(f)) + "\n" for f in faults))
    (run_dir / "report.md").write_text(
        tables + "\n\n" + "\n".join(problems or ["all invariants held"]) + "\n"
    )
    return result


async def _chaos(
    config: SoakConfig,
    stack: SoakStack,
    injector: Injector,
    rng: random.Random,
    end_at: float,
    faults: list[Fault],
    checkpoint_problems: list[str],
    watcher: Watcher,
) -> None:
    """Faults until `end_at`, each after the stack came back from the one before."""
    kinds = plan(config.seed, config.faults)
    # faults only once the loop has gone round once (a sample generated, trained, committed)
    first = min(end_at - time.monotonic(), config.recovery_timeout_s)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(watcher.first_commit.wait(), timeout=max(0.0, first))
    while True:
        gap = rng.uniform(*config.gap_s)
        if time.monotonic() + gap >= end_at:
            await asyncio.sleep(max(0.0, end_at - time.monotonic()))
            return
        await asyncio.sleep(gap)
        fault = await injector.inject(next(kinds))
        faults.append(fault)
        logger.info("soak: %s: %s", fault.kind, fault.detail)
        await asyncio.sleep(2.0)  # the launcher sees a death within its poll
        if not await asyncio.to_thread(stack.wait_all_ready, config.recovery_timeout_s):
            fault.problems.append(f"the stack was not back within {config.recovery_timeout_s:.0f}s")
            return
        if (problem := watcher.newest_problem()) is not None:
            checkpoint_problems.append(f"after {fault.kind}: {problem}")


async def _drain(stack: SoakStack, timeout_s: float) -> tuple[set[str], dict[str, str]]:
    """Wait until the trainer has committed or set aside everything in the stream; return
    what the stream still holds and what the dead-letter stream holds (id -> reason)."""
    settings = CommonSettings(_env_file=None, data_dir=stack.data_dir)  # type: ignore[call-arg]
    client = connect(stack.redis.url)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if await client.xlen(settings.stream) == 0:
                    break
            except Exception:  # Redis restarting: try again
                pass
            await asyncio.sleep(1.0)
        left = {
            (i.decode() if isinstance(i, bytes) else i)
            for i, _ in await client.xrange(settings.stream)
        }
        dead = {}
        for _, fields in await client.xrange(settings.dead_letter_stream):
            decoded = {
                (k.decode() if isinstance(k, bytes) else k): (
                    v.decode(errors="replace") if isinstance(v, bytes) else v
                )
                for k, v in fields.items()
            }
            dead[decoded.get("id", "?")] = decoded.get("reason", "")
    finally:
        await client.aclose()
    return left, dead


def _step_times(metrics_file: Path) -> list[float]:
    times = []
    if metrics_file.exists():
        for line in metrics_file.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == "step":
                times.append(float(record["time"]))
    return times
