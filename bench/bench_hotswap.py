"""Hot swap benchmark: how long generation stops and how long a new checkpoint takes to serve,
side by side in one run: hot-swapped through the generator API (POST /weights) by staging then
flipping (the default), by reloading inside the pause (the former way), and by restarting the
engine on it. Same model, same machine, one run; the two swap strategies take turns.

The engine and the generator are real `gvloop agent-a engine|serve` processes. Checkpoints are
hard-linked copies of the model inside a private checkpoint root (what a trainer writes).

    python bench/bench_hotswap.py --models default,random-1b --swaps 5
    python bench/bench_hotswap.py --loaded --swaps 12 --step-tokens none,512

With several models it prints, last, how the pause grows with the model's size each way.

`--loaded` measures the default strategy under the demo's load instead, once per engine step
bound (`GVLOOP_ENGINE_MAX_NUM_BATCHED_TOKENS`; `none`: vLLM's default): the demo's two feeders
(8 addition problems x 4 samples per request, temperature 0.8, 48 tokens) and, after every
swap, its held-out evaluation (100 greedy problems at once), as `make run` sends them to the
engine, with a swap every `--interval` seconds. It prints p50/p95/max of the pause (waiting for
the engine's step in flight), of generation stopped and of the longest gap between a streamed
request's tokens, and the load's completion tokens/s: what the bound costs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated

import httpx
import typer
from safetensors import safe_open

from gvloop.launcher import Component, Launcher
from gvloop.problems import PROBLEM_SETS, load_problems
from gvloop.stack import local_components
from gvloop.tiny_model import SIZES, parse_random, random_llama
from gvloop.topology import StackTopology
from services.clients import GeneratorClient
from services.model_files import resolve_model
from services.redis_server import EmbeddedRedis
from services.schemas import ProblemIn, SwapRequest, SwapStrategy
from services.settings import CommonSettings
from services.spread import Spread

STRATEGIES: tuple[SwapStrategy, ...] = ("stage", "reload")
STREAM_TOKENS = 400  # per streamed request: seconds of decoding on 2 cores


@dataclass
class Swap:
    stopped_s: float
    """Generation stopped: from the engine standing still (paused, its step in flight done)
    to its resume."""
    stage_s: float
    """Staging while the engine serves (stage strategy only)."""
    load_s: float
    """Loading inside the pause: the flip, or the reload."""
    to_serving_s: float
    """POST /weights sent -> first token of the new version served."""
    longest_gap_s: float
    """Longest wait between two tokens of a request streaming through the swap (as a client
    sees it: the pause, and any slowdown while staging)."""
    fell_back: bool = False
    """A stage the engine refused for want of host memory: reloaded in the pause instead."""


@dataclass
class TokenClock:
    """Arrival times of the tokens of requests kept streaming while the swaps run."""

    requests: list[list[float]] = field(default_factory=list)

    def longest_gap(self, start: float, end: float) -> float:
        """Longest wait between two tokens of one request, over the gaps touching [start, end]."""
        return max(
            (
                b - a
                for times in self.requests
                for a, b in itertools.pairwise(times)
                if b >= start and a <= end
            ),
            default=0.0,
        )


async def keep_streaming(engine_url: str, clock: TokenClock, stop: asyncio.Event) -> None:
    """One streamed completion after another until `stop`, each token's arrival recorded."""
    async with httpx.AsyncClient(base_url=engine_url, timeout=600) as http:
        model = (await http.get("/v1/models")).json()["data"][0]["id"]
        body = {
            "model": model,
            "prompt": "Once upon a time",
            "max_tokens": STREAM_TOKENS,
            "min_tokens": STREAM_TOKENS,  # a sampled end of sequence must not end it early
            "temperature": 0.8,
            "stream": True,
        }
        while not stop.is_set():
            times: list[float] = []
            clock.requests.append(times)
            async with http.stream("POST", "/v1/completions", json=body) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        times.append(time.perf_counter())
                    if stop.is_set():
                        break


async def first_token(engine_url: str) -> str:
    """One single-token completion; returns the weight version that served it."""
    async with httpx.AsyncClient(base_url=engine_url, timeout=600) as http:
        model = (await http.get("/v1/models")).json()["data"][0]["id"]
        body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
        (await http.post("/v1/chat/completions", json=body)).raise_for_status()
        return (await http.get("/weight_info")).json()["weight_version"]


async def hot_swaps(
    generator_url: str, engine_url: str, checkpoints: list[Path]
) -> dict[SwapStrategy, list[Swap]]:
    """Each checkpoint swapped in by each strategy in turn (so drift hits both alike)."""
    swaps: dict[SwapStrategy, list[Swap]] = {s: [] for s in STRATEGIES}
    version = 0
    clock, stop = TokenClock(), asyncio.Event()
    streaming = asyncio.create_task(keep_streaming(engine_url, clock, stop))
    while not (clock.requests and len(clock.requests[-1]) > 2):  # tokens are flowing
        if streaming.done():
            await streaming  # raises why it stopped
        await asyncio.sleep(0.1)
    async with GeneratorClient(generator_url, timeout_s=600) as client:
        for checkpoint in checkpoints:
            for strategy in STRATEGIES:
                version += 1
                started = time.perf_counter()
                request = SwapRequest(
                    checkpoint_dir=str(checkpoint), version=version, strategy=strategy
                )
                answer = await client.swap(request)
                swapped = time.perf_counter()
                served = await first_token(engine_url)
                to_serving = time.perf_counter() - started
                assert served == str(version), (served, version)
                t = answer.timings
                await asyncio.sleep(0.5)  # the stream's tokens after the swap close its gap
                gap = clock.longest_gap(started, swapped)
                fell_back = answer.strategy != strategy
                swaps[strategy].append(
                    Swap(t.stopped_s, t.stage_s, t.reload_s, to_serving, gap, fell_back)
                )
    stop.set()
    await streaming
    return swaps


@dataclass
class Loaded:
    """One engine step bound under the demo's load: each swap's timings, and the load's
    throughput over the run."""

    step_tokens: int | None
    pauses: list[float] = field(default_factory=list)
    stopped: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0


async def demo_load(engine_url: str, loaded: Loaded, evaluate: asyncio.Event,
                    stop: asyncio.Event) -> None:  # fmt: skip
    """The demo's requests to the engine until `stop`: two feeders, and one held-out evaluation
    each time `evaluate` is set. Counts the completion tokens served."""
    problem_set = PROBLEM_SETS["addition"]
    train = load_problems(problem_set.train)
    heldout = load_problems(problem_set.heldout, limit=100)
    async with httpx.AsyncClient(base_url=engine_url, timeout=600) as http:
        model = (await http.get("/v1/models")).json()["data"][0]["id"]

        async def complete(problem: ProblemIn, **sampling: object) -> None:
            body = {"model": model, "messages": [m.model_dump() for m in problem.chat()]}
            response = await http.post("/v1/chat/completions", json={**body, **sampling})
            response.raise_for_status()
            loaded.tokens += response.json()["usage"]["completion_tokens"]

        async def feeder(offset: int) -> None:
            for start in itertools.count(offset * 8, 16):
                batch = [train[(start + i) % len(train)] for i in range(8)]
                await asyncio.gather(
                    *(complete(p, n=4, temperature=0.8, max_tokens=48) for p in batch)
                )

        async def evaluations() -> None:
            while True:
                await evaluate.wait()
                evaluate.clear()
                await asyncio.gather(*(complete(p, temperature=0, max_tokens=48) for p in heldout))

        tasks = [asyncio.create_task(c) for c in (feeder(0), feeder(1), evaluations())]
        started = time.perf_counter()
        await stop.wait()
        loaded.seconds = time.perf_counter() - started
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def loaded_swaps(
    generator_url: str, engine_url: str, checkpoints: list[Path], interval_s: float,
    loaded: Loaded,
) -> None:  # fmt: skip
    """Swap every `interval_s` under the demo's load (an evaluation after each swap, as the
    demo does), with a request streaming throughout."""
    clock, stop, evaluate = TokenClock(), asyncio.Event(), asyncio.Event()
    streaming = asyncio.create_task(keep_streaming(engine_url, clock, stop))
    load = asyncio.create_task(demo_load(engine_url, loaded, evaluate, stop))
    async with GeneratorClient(generator_url, timeout_s=600) as client:
        for version, checkpoint in enumerate(checkpoints, start=1):
            await asyncio.sleep(interval_s)
            for task in (streaming, load):
                if task.done():
                    await task  # raises why it stopped
            started = time.perf_counter()
            request = SwapRequest(checkpoint_dir=str(checkpoint), version=version)
            answer = await client.swap(request)
            swapped = time.perf_counter()
            evaluate.set()
            await asyncio.sleep(1.0)  # the stream's tokens after the swap close its gap
            if version > 1:  # the first one warms up
                loaded.pauses.append(answer.timings.pause_s)
                loaded.stopped.append(answer.timings.stopped_s)
                loaded.gaps.append(clock.longest_gap(started, swapped))
    stop.set()
    await asyncio.gather(streaming, load)


def restart(launcher: Launcher, engine: Component, checkpoint: Path, engine_url: str) -> float:
    """Stop the engine, start it on the checkpoint, serve a first token: seconds taken."""
    started = time.perf_counter()
    launcher.stop_all()
    launcher.start(replace(engine, env={**engine.env, "GVLOOP_MODEL": str(checkpoint)}))
    launcher.wait_ready()
    asyncio.run(first_token(engine_url))
    return time.perf_counter() - started


@dataclass
class Measured:
    model: str
    params_m: float
    swaps: dict[SwapStrategy, list[Swap]]
    restart_s: float


@contextlib.contextmanager
def swap_stack(
    model_dir: Path, swaps: int, kv_cache_gib: int, env: dict[str, str] | None = None
) -> Iterator[tuple[Launcher, Component, StackTopology, list[Path]]]:
    """An engine and a generator on `model_dir`, and the checkpoints to swap in turn."""
    with tempfile.TemporaryDirectory(prefix="bench-hotswap-") as tmp:
        data_dir = Path(tmp)
        root = data_dir / "checkpoints"
        checkpoints = []
        for i in range(2):  # two hard-linked copies, alternated: each swap loads a new directory
            checkpoints.append(root / f"step_{i}")
            shutil.copytree(model_dir, checkpoints[-1], copy_function=os.link)
        topology = StackTopology.free()
        env = {
            "GVLOOP_CHECKPOINT_DIR": str(root),
            "GVLOOP_ENGINE_KV_CACHE_GIB": str(kv_cache_gib),
            **(env or {}),
        }
        with EmbeddedRedis(data_dir / "redis") as redis:
            components = {
                c.name: c
                for c in local_components(
                    str(model_dir), redis.url, data_dir, topology, env, trainer=False
                )
            }
            with Launcher(data_dir / "logs", echo=False) as engines:
                engines.start(components["engine"])
                engines.wait_ready()
                with Launcher(data_dir / "logs", echo=False) as generator:
                    generator.start(components["generator"])
                    generator.wait_ready()
                    plan = [checkpoints[i % 2] for i in range(swaps + 1)]
                    yield engines, components["engine"], topology, plan


def measure(model_dir: Path, swaps: int, kv_cache_gib: int) -> Measured:
    """Every way to load a checkpoint of `model_dir`, on one engine and one generator."""
    with swap_stack(model_dir, swaps, kv_cache_gib) as (engines, engine, topology, plan):
        engine_url = topology.engine.url
        measured = asyncio.run(hot_swaps(topology.generator.url, engine_url, plan))
        restarted = restart(engines, engine, plan[0], engine_url)
    return Measured(model_dir.name, parameters(model_dir) / 1e6, measured, restarted)


def measure_loaded(
    model_dir: Path, swaps: int, kv_cache_gib: int, step_tokens: int | None, interval_s: float
) -> Loaded:
    env = {} if step_tokens is None else {"GVLOOP_ENGINE_MAX_NUM_BATCHED_TOKENS": str(step_tokens)}
    loaded = Loaded(step_tokens)
    with swap_stack(model_dir, swaps, kv_cache_gib, env) as (_, _, topology, plan):
        urls = (topology.generator.url, topology.engine.url)
        asyncio.run(loaded_swaps(*urls, plan, interval_s, loaded))
    return loaded


def loaded_table(results: list[Loaded]) -> None:
    print(
        f"\nunder the demo's load, {len(results[0].stopped)} swaps each after a warm-up "
        "(p50 / p95 / max, seconds)"
    )
    print(
        "| engine step bound (tokens) | pause: the step in flight | generation stopped "
        "| longest gap between streamed tokens | load served (tokens/s) | x unbounded |"
    )
    print("|---|---|---|---|---|---|")
    base = results[0].tokens / results[0].seconds
    for r in results:
        cells = [Spread.of(values) for values in (r.pauses, r.stopped, r.gaps)]
        text = [f"{c.p50:.3f} / {c.p95:.3f} / {c.max:.3f}" if c else "-" for c in cells]
        rate = r.tokens / r.seconds
        print(
            f"| {r.step_tokens or 'none (vLLM default)'} | {' | '.join(text)} | {rate:.0f} "
            f"| {rate / base:.2f} |"
        )


def parameters(model_dir: Path) -> int:
    """Parameters in the model's safetensors files (read from their headers)."""
    total = 0
    for path in model_dir.glob("*.safetensors"):
        with safe_open(path, "pt") as tensors:
            total += sum(math.prod(tensors.get_slice(k).get_shape()) for k in tensors.keys())
    return total


def table(result: Measured) -> None:
    timed = {strategy: swaps[1:] for strategy, swaps in result.swaps.items()}  # 1st warms up
    print(
        f"\nmodel {result.model}, {result.params_m:.0f}M parameters, "
        f"median of {len(timed['stage'])} swaps each"
    )
    print(
        "| way to load a checkpoint | generation stopped (s) | longest gap between a streamed "
        "request's tokens (s) | checkpoint to serving (s) |"
    )
    print("|---|---|---|---|")
    for strategy, label in (("stage", "stage, then flip"), ("reload", "reload in the pause")):
        stage = statistics.median(s.stage_s for s in timed[strategy])
        load = statistics.median(s.load_s for s in timed[strategy])
        detail = (
            f"stage {stage:.3f} s while serving, flip {load:.3f} s"
            if strategy == "stage"
            else f"reload {load:.3f} s"
        )
        to_serving = statistics.median(s.to_serving_s for s in timed[strategy])
        gap = statistics.median(s.longest_gap_s for s in timed[strategy])
        fell_back = sum(s.fell_back for s in timed[strategy])
        if fell_back:
            detail += f"; {fell_back} fell back to a reload, short of host memory"
        pause = stopped(result, strategy)
        print(f"| {label} ({detail}) | {pause:.3f} | {gap:.3f} | {to_serving:.3f} |")
    restart_s = result.restart_s
    print(f"| engine restart | {restart_s:.1f} | {restart_s:.1f} | {restart_s:.1f} |")


def stopped(result: Measured, strategy: SwapStrategy) -> float:
    """Median seconds generation stopped, after the warm-up swap."""
    return statistics.median(s.stopped_s for s in result.swaps[strategy][1:])


def growth(results: list[Measured]) -> None:
    """Generation stopped per model, each way, and how it grows from the first model."""
    print(
        "\n| model | parameters (M) | stopped, stage+flip (s) | stopped, reload (s) | restart (s) |"
    )
    print("|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r.model} | {r.params_m:.0f} | {stopped(r, 'stage'):.3f} "
            f"| {stopped(r, 'reload'):.3f} | {r.restart_s:.1f} |"
        )
    if len(results) > 1:
        first, last = results[0], results[-1]
        stage, reload = (stopped(last, s) / stopped(first, s) for s in ("stage", "reload"))
        print(
            f"\n{last.model} against {first.model} ({last.params_m / first.params_m:.1f}x the "
            f"parameters): generation stops {stage:.1f}x longer with stage+flip, "
            f"{reload:.1f}x longer with reload"
        )


def main(
    models: Annotated[
        str,
        typer.Option(
            help="Comma-separated: `default`, a model directory, or `random-<size>` "
            f"(a random Llama built in the data directory; sizes: {', '.join(SIZES)})."
        ),
    ] = "default",
    swaps: Annotated[int, typer.Option(help="Timed hot swaps (after one warm-up).")] = 5,
    kv_cache_gib: Annotated[int, typer.Option(help="Engine KV cache (GiB).")] = 2,
    loaded: Annotated[bool, typer.Option(help="Swap under the demo's load instead.")] = False,
    step_tokens: Annotated[
        str, typer.Option(help="With --loaded: engine step bounds to compare (none: vLLM's).")
    ] = "none,512",
    interval: Annotated[float, typer.Option(help="With --loaded: seconds between swaps.")] = 10,
) -> None:
    common = CommonSettings()
    if loaded:
        model_dir = Path(resolve_model(models.split(",")[0], common.data_dir))
        bounds = [None if b == "none" else int(b) for b in step_tokens.split(",")]
        loaded_table([measure_loaded(model_dir, swaps, kv_cache_gib, b, interval) for b in bounds])
        return
    results = []
    for name in models.split(","):
        size = parse_random(name)
        if size is None:
            model_dir = Path(resolve_model(name, common.data_dir))
        else:
            target = common.data_dir / "models" / f"random-llama-{size}"
            model_dir = random_llama(target, size, data_dir=common.data_dir)
        results.append(measure(model_dir, swaps, kv_cache_gib))
        table(results[-1])
    growth(results)


if __name__ == "__main__":
    typer.run(main)
