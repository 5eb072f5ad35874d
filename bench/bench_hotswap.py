"""Hot swap benchmark: how long generation stops and how long a new checkpoint takes to serve,
side by side in one run: hot-swapped through the generator API (POST /weights) by staging then
flipping (the default), by reloading inside the pause (the former way), and by restarting the
engine on it. Same model, same machine, one run; the two swap strategies take turns.

The engine and the generator are real `gvloop agent-a engine|serve` processes. Checkpoints are
hard-linked copies of the model inside a private checkpoint root (what a trainer writes).

    python bench/bench_hotswap.py --models default,random-1b --swaps 5

With several models it prints, last, how the pause grows with the model's size each way.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated

import httpx
import typer
from safetensors import safe_open

from gvloop.launcher import Component, Launcher
from gvloop.stack import local_components
from gvloop.tiny_model import SIZES, parse_random, random_llama
from gvloop.topology import StackTopology
from services.clients import GeneratorClient
from services.model_files import resolve_model
from services.redis_server import EmbeddedRedis
from services.schemas import SwapRequest, SwapStrategy
from services.settings import CommonSettings

STRATEGIES: tuple[SwapStrategy, ...] = ("stage", "reload")
STREAM_TOKENS = 400  # per streamed request: seconds of decoding on 2 cores


@dataclass
class Swap:
    stopped_s: float
    """Generation stopped: first pause sent to last engine resumed (as the engine's requests
    see it)."""
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


def measure(model_dir: Path, swaps: int, kv_cache_gib: int) -> Measured:
    """Every way to load a checkpoint of `model_dir`, on one engine and one generator."""
    with tempfile.TemporaryDirectory(prefix="bench-hotswap-") as tmp:
        data_dir = Path(tmp)
        root = data_dir / "checkpoints"
        checkpoints = []
        for i in range(2):  # two hard-linked copies, alternated: each swap loads a new directory
            checkpoints.append(root / f"step_{i}")
            shutil.copytree(model_dir, checkpoints[-1], copy_function=os.link)
        topology = StackTopology.free()
        env = {"GVLOOP_CHECKPOINT_DIR": str(root), "GVLOOP_ENGINE_KV_CACHE_GIB": str(kv_cache_gib)}
        with EmbeddedRedis(data_dir / "redis") as redis:
            components = {
                c.name: c
                for c in local_components(
                    str(model_dir), redis.url, data_dir, topology, env, trainer=False
                )
            }
            engine_url = topology.engine.url
            with Launcher(data_dir / "logs", echo=False) as engines:
                engines.start(components["engine"])
                engines.wait_ready()
                with Launcher(data_dir / "logs", echo=False) as generator:
                    generator.start(components["generator"])
                    generator.wait_ready()
                    plan = [checkpoints[i % 2] for i in range(swaps + 1)]
                    measured = asyncio.run(hot_swaps(topology.generator.url, engine_url, plan))
                restarted = restart(engines, components["engine"], checkpoints[0], engine_url)
    return Measured(model_dir.name, parameters(model_dir) / 1e6, measured, restarted)


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
) -> None:
    common = CommonSettings()
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
