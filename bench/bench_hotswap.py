"""Hot swap benchmark: how long generation stops and how long a new checkpoint takes to serve,
side by side in one run: hot-swapped through the generator API (POST /weights) by staging then
flipping (the default), by reloading inside the pause (the former way), and by restarting the
engine on it. Same model, same machine, one run; the two swap strategies take turns.

The engine and the generator are real `gvloop agent-a engine|serve` processes. Checkpoints are
hard-linked copies of the model inside a private checkpoint root (what a trainer writes).

    python bench/bench_hotswap.py --model default --swaps 5
"""

from __future__ import annotations

import asyncio
import itertools
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

from gvloop.launcher import Component, Launcher
from gvloop.stack import StackPorts, local_components
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
                swaps[strategy].append(Swap(t.stopped_s, t.stage_s, t.reload_s, to_serving, gap))
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


def main(
    model: Annotated[str, typer.Option(help="`default`, or a model directory.")] = "default",
    swaps: Annotated[int, typer.Option(help="Timed hot swaps (after one warm-up).")] = 5,
    kv_cache_gib: Annotated[int, typer.Option(help="Engine KV cache (GiB).")] = 2,
) -> None:
    common = CommonSettings()
    model_dir = Path(resolve_model(model, common.data_dir))
    with tempfile.TemporaryDirectory(prefix="bench-hotswap-") as tmp:
        data_dir = Path(tmp)
        root = data_dir / "checkpoints"
        checkpoints = []
        for i in range(2):  # two hard-linked copies, alternated: each swap loads a new directory
            checkpoints.append(root / f"step_{i}")
            shutil.copytree(model_dir, checkpoints[-1], copy_function=os.link)
        ports = StackPorts.free()
        env = {"GVLOOP_CHECKPOINT_DIR": str(root), "GVLOOP_ENGINE_KV_CACHE_GIB": str(kv_cache_gib)}
        with EmbeddedRedis(data_dir / "redis") as redis:
            components = {
                c.name: c
                for c in local_components(
                    str(model_dir), redis.url, data_dir, ports, env, trainer=False
                )
            }
            engine_url = f"http://127.0.0.1:{ports.engine}"
            with Launcher(data_dir / "logs", echo=False) as engines:
                engines.start(components["engine"])
                engines.wait_ready()
                with Launcher(data_dir / "logs", echo=False) as generator:
                    generator.start(components["generator"])
                    generator.wait_ready()
                    plan = [checkpoints[i % 2] for i in range(swaps + 1)]
                    measured = asyncio.run(
                        hot_swaps(f"http://127.0.0.1:{ports.generator}", engine_url, plan)
                    )
                restarted = restart(engines, components["engine"], checkpoints[0], engine_url)

    size_mb = sum(f.stat().st_size for f in model_dir.glob("*.safetensors")) / 1e6
    print(f"\nmodel {model_dir.name}, {size_mb:.0f} MB of weights, median of {swaps} swaps each")
    print(
        "| way to load a checkpoint | generation stopped (s) | longest gap between a streamed "
        "request's tokens (s) | checkpoint to serving (s) |"
    )
    print("|---|---|---|---|")
    for strategy, label in (("stage", "stage, then flip"), ("reload", "reload in the pause")):
        timed = measured[strategy][1:]  # the first one warms up
        stage = statistics.median(s.stage_s for s in timed)
        load = statistics.median(s.load_s for s in timed)
        detail = (
            f"stage {stage:.3f} s while serving, flip {load:.3f} s"
            if strategy == "stage"
            else f"reload {load:.3f} s"
        )
        stopped = statistics.median(s.stopped_s for s in timed)
        to_serving = statistics.median(s.to_serving_s for s in timed)
        gap = statistics.median(s.longest_gap_s for s in timed)
        print(f"| {label} ({detail}) | {stopped:.3f} | {gap:.3f} | {to_serving:.3f} |")
    print(f"| engine restart | {restarted:.1f} | {restarted:.1f} | {restarted:.1f} |")


if __name__ == "__main__":
    typer.run(main)
