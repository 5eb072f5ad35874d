"""Generator throughput benchmark: problems/s and completion tokens/s through the generator API
(generation, verification by agent B, the Redis queue) against raw chat completions to the same
vLLM engine, with the same prompts, sampling and seeds, in one run. The ratio is the pipeline's
overhead. Rounds alternate raw and pipeline so drift on a shared machine hits both alike.

Engine, verifier and generator are real `gvloop` processes, wired as `gvloop up` wires them.

    python bench/bench_generator.py --model default --problems 32 --n 4 --max-tokens 64
    python bench/bench_generator.py --step-tokens none,512      # what an engine step bound costs

With several `--step-tokens` (`GVLOOP_ENGINE_MAX_NUM_BATCHED_TOKENS`; none: vLLM's default),
each bound gets a stack of its own, one after the other in the same run, and its rows.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer

from gvloop.launcher import Launcher
from gvloop.problems import PROBLEM_SETS, load_problems
from gvloop.stack import local_components
from gvloop.topology import StackTopology
from services.clients import GeneratorClient
from services.model_files import resolve_model
from services.redis_server import EmbeddedRedis
from services.schemas import GenerateRequest, ProblemIn, SamplingParams
from services.settings import CommonSettings

Rate = tuple[float, float]  # (problems/s, completion tokens/s)


async def raw(engine_url: str, problems: list[ProblemIn], n: int, sampling: SamplingParams) -> Rate:
    """Every problem as its own chat completion, all at once (as the generator sends them)."""
    async with httpx.AsyncClient(base_url=engine_url, timeout=1800) as http:
        model = (await http.get("/v1/models")).json()["data"][0]["id"]

        async def one(problem: ProblemIn) -> int:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": problem.problem}],
                "n": n,
                **sampling.model_dump(exclude_none=True),
            }
            response = await http.post("/v1/chat/completions", json=body)
            response.raise_for_status()
            return response.json()["usage"]["completion_tokens"]

        started = time.perf_counter()
        tokens = sum(await asyncio.gather(*(one(p) for p in problems)))
        elapsed = time.perf_counter() - started
    return len(problems) / elapsed, tokens / elapsed


async def pipeline(
    generator_url: str, problems: list[ProblemIn], n: int, sampling: SamplingParams
) -> Rate:
    """The same problems as one POST /problems: generated, verified and queued."""
    async with GeneratorClient(generator_url, timeout_s=1800) as client:
        started = time.perf_counter()
        response = await client.generate(GenerateRequest(problems=problems, n=n, sampling=sampling))
        elapsed = time.perf_counter() - started
    solutions = [s for r in response.data for s in r.solutions]
    assert all(s.queued for s in solutions)
    return len(problems) / elapsed, sum(s.completion_tokens for s in solutions) / elapsed


async def measure(
    topology: StackTopology,
    problems: list[ProblemIn],
    n: int,
    sampling: SamplingParams,
    rounds: int,
) -> tuple[list[Rate], list[Rate]]:
    engine_url, generator_url = topology.engine.url, topology.generator.url
    await raw(engine_url, problems[:2], n, sampling)  # burn-in: first batches are slow
    await pipeline(generator_url, problems[:2], n, sampling)
    raws, pipes = [], []
    for _ in range(rounds):
        raws.append(await raw(engine_url, problems, n, sampling))
        pipes.append(await pipeline(generator_url, problems, n, sampling))
    return raws, pipes


def main(
    model: Annotated[str, typer.Option(help="`default`, or a model directory.")] = "default",
    problems: Annotated[int, typer.Option(help="Problems per batch.")] = 32,
    n: Annotated[int, typer.Option(help="Samples per problem.")] = 4,
    max_tokens: Annotated[int, typer.Option(help="Completion tokens per sample.")] = 64,
    rounds: Annotated[int, typer.Option(help="Timed rounds of each (after a burn-in).")] = 2,
    kv_cache_gib: Annotated[int, typer.Option(help="Engine KV cache (GiB).")] = 2,
    step_tokens: Annotated[
        str, typer.Option(help="Engine step bounds, comma-separated (none: vLLM's default).")
    ] = "none",
) -> None:
    common = CommonSettings()
    model_dir = resolve_model(model, common.data_dir)
    batch = load_problems(PROBLEM_SETS["words"].train, limit=problems)
    sampling = SamplingParams(temperature=0.8, max_tokens=max_tokens, seed=0)
    print(
        f"\nmodel {Path(model_dir).name}: {problems} problems x n={n}, max_tokens {max_tokens}, "
        f"temperature {sampling.temperature}, median of {rounds} rounds"
    )
    print("| engine step bound | path | problems/s | completion tokens/s | vs unbounded raw |")
    print("|---|---|---|---|---|")
    baseline = None
    for bound in step_tokens.split(","):
        env = {"GVLOOP_ENGINE_KV_CACHE_GIB": str(kv_cache_gib), "GVLOOP_MAX_BACKLOG": "100000"}
        if bound != "none":
            env["GVLOOP_ENGINE_MAX_NUM_BATCHED_TOKENS"] = bound
        raws, pipes = run_stack(model_dir, env, batch, n, sampling, rounds)
        raw_p, raw_t = (statistics.median(r[i] for r in raws) for i in (0, 1))
        pipe_p, pipe_t = (statistics.median(r[i] for r in pipes) for i in (0, 1))
        baseline = baseline or raw_t
        label = "none (vLLM default)" if bound == "none" else f"{bound} tokens"
        print(
            f"| {label} | raw vLLM chat completions | {raw_p:.2f} | {raw_t:.0f} "
            f"| {raw_t / baseline:.2f} |"
        )
        print(
            f"| {label} | generator API (+ verifier + queue) | {pipe_p:.2f} | {pipe_t:.0f} "
            f"| {pipe_t / baseline:.2f} |"
        )


def run_stack(
    model_dir: str, env: dict[str, str], batch: list[ProblemIn], n: int,
    sampling: SamplingParams, rounds: int,
) -> tuple[list[Rate], list[Rate]]:  # fmt: skip
    """Engine, verifier and generator as `gvloop up` runs them, measured."""
    topology = StackTopology.free()
    with tempfile.TemporaryDirectory(prefix="bench-generator-") as tmp:
        data_dir = Path(tmp)
        with (
            EmbeddedRedis(data_dir / "redis") as redis,
            Launcher(data_dir / "logs", echo=False) as launcher,
        ):
            for component in local_components(
                model_dir, redis.url, data_dir, topology, env, trainer=False
            ):
                launcher.start(component)
            launcher.wait_ready()
            return asyncio.run(measure(topology, batch, n, sampling, rounds))


if __name__ == "__main__":
    typer.run(main)
