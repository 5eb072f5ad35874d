"""Hot swap benchmark: how long generation stops and how long a new checkpoint takes to serve,
hot-swapped through the generator API (POST /weights) against the alternative, restarting the
engine on it. Same model, same machine, one run: the restart is the baseline of the ratio.

The engine and the generator are real `gvloop agent-a engine|serve` processes. Checkpoints are
hard-linked copies of the model inside a private checkpoint root (what a trainer writes).

    python bench/bench_hotswap.py --model default --swaps 5
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

import httpx
import typer

from gvloop.launcher import Component, Launcher
from gvloop.stack import StackPorts, local_components
from services.clients import GeneratorClient
from services.model_files import resolve_model
from services.redis_server import EmbeddedRedis
from services.schemas import SwapRequest
from services.settings import CommonSettings


@dataclass
class Swap:
    stopped_s: float
    """Generation stopped: pause to resume (as the engine's requests see it)."""
    pause_s: float
    reload_s: float
    to_serving_s: float
    """POST /weights sent -> first token of the new version served."""


async def first_token(engine_url: str) -> str:
    """One single-token completion; returns the weight version that served it."""
    async with httpx.AsyncClient(base_url=engine_url, timeout=600) as http:
        model = (await http.get("/v1/models")).json()["data"][0]["id"]
        body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
        (await http.post("/v1/chat/completions", json=body)).raise_for_status()
        return (await http.get("/weight_info")).json()["weight_version"]


async def hot_swaps(generator_url: str, engine_url: str, checkpoints: list[Path]) -> list[Swap]:
    swaps = []
    async with GeneratorClient(generator_url, timeout_s=600) as client:
        for version, checkpoint in enumerate(checkpoints, start=1):
            started = time.perf_counter()
            answer = await client.swap(SwapRequest(checkpoint_dir=str(checkpoint), version=version))
            served = await first_token(engine_url)
            to_serving = time.perf_counter() - started
            assert served == str(version), (served, version)
            t = answer.timings
            swaps.append(Swap(t.total_s, t.pause_s, t.reload_s, to_serving))
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
                    )[1:]  # the first one warms up
                restarted = restart(engines, components["engine"], checkpoints[0], engine_url)

    stopped = statistics.median(s.stopped_s for s in measured)
    to_serving = statistics.median(s.to_serving_s for s in measured)
    pause = statistics.median(s.pause_s for s in measured)
    reload = statistics.median(s.reload_s for s in measured)
    size_mb = sum(f.stat().st_size for f in model_dir.glob("*.safetensors")) / 1e6
    print(f"\nmodel {model_dir.name}, {size_mb:.0f} MB of weights")
    print(
        "| way to load a checkpoint | generation stopped (s) | checkpoint to serving (s) | ratio |"
    )
    print("|---|---|---|---|")
    print(
        f"| hot swap, median of {len(measured)} (pause call {pause:.3f} s, reload {reload:.3f} s)"
        f" | {stopped:.3f} | {to_serving:.3f} | 1 |"
    )
    print(
        f"| engine restart (baseline) | {restarted:.1f} | {restarted:.1f} "
        f"| x{restarted / to_serving:.0f} slower |"
    )


if __name__ == "__main__":
    typer.run(main)
