"""Verifier benchmark: verifications per second with request coalescing against one request
per forward pass (the baseline), same model, same machine, same load, in one run; p50/p95
latency and the mean judge batch. Each configuration is a real `gvloop agent-b serve` process
driven over HTTP by `--concurrency` clients.

    python bench/bench_verifier.py --models tiny,default --requests 128 --concurrency 16
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import httpx
import typer

from gvloop.launcher import Component, Launcher, free_ports
from gvloop.problems import PROBLEM_SETS, load_problems
from services.clients import VerifierClient
from services.model_files import resolve_model
from services.schemas import VerifyRequest
from services.settings import CommonSettings

MODES = {  # name: server settings
    "one at a time": {"GVLOOP_VERIFIER_MAX_BATCH_SIZE": "1", "GVLOOP_VERIFIER_MAX_WAIT_MS": "0"},
    "coalescing": {"GVLOOP_VERIFIER_MAX_BATCH_SIZE": "16", "GVLOOP_VERIFIER_MAX_WAIT_MS": "5"},
}


@dataclass
class Result:
    model: str
    workload: str
    mode: str
    per_s: float
    p50_ms: float
    p95_ms: float
    judge_batch: float


WORKLOADS = {  # name: (reference answer given, method); the server asks about steps too
    "rules only": (True, "rule"),
    "rule + judge steps": (True, "auto"),
    "judge, no reference": (False, "auto"),
}


def workload(count: int, with_reference: bool, method: str) -> list[VerifyRequest]:
    """Problems of the built-in set with worked solutions, every third one wrong."""
    requests = []
    for i, problem in enumerate(load_problems(PROBLEM_SETS["words"].train, limit=count)):
        answer = int(problem.reference_answer or 0) + (1 if i % 3 == 0 else 0)
        solution = f"Let me work it out step by step. So the total is {answer}. Answer: {answer}"
        reference = problem.reference_answer if with_reference else None
        requests.append(
            VerifyRequest(
                problem=problem.problem,
                solution=solution,
                reference_answer=reference,
                method=method,  # type: ignore[arg-type]
            )
        )
    return requests


def judge_counters(metrics: str) -> tuple[float, float]:
    """(forward passes, prompts) so far, from the Prometheus text."""
    values = dict(
        line.rsplit(" ", 1)
        for line in metrics.splitlines()
        if line.startswith("gvloop_verifier_judge_batch_size_")
    )
    return (
        float(values.get("gvloop_verifier_judge_batch_size_count", 0)),
        float(values.get("gvloop_verifier_judge_batch_size_sum", 0)),
    )


async def drive(url: str, requests: list[VerifyRequest], concurrency: int) -> tuple[float, list]:
    """Send every request with `concurrency` in flight; (seconds, latencies in ms)."""
    latencies: list[float] = []
    gate = asyncio.Semaphore(concurrency)
    async with VerifierClient(url, timeout_s=600) as client:

        async def one(request: VerifyRequest) -> None:
            async with gate:
                started = time.perf_counter()
                await client.verify(request)
                latencies.append((time.perf_counter() - started) * 1000)

        await asyncio.gather(*(one(r) for r in requests[: 2 * concurrency]))  # burn in
        latencies.clear()
        started = time.perf_counter()
        await asyncio.gather(*(one(r) for r in requests))
        return time.perf_counter() - started, latencies


def measure(
    model_name: str, model_dir: str, requests: int, concurrency: int, logs: Path
) -> list[Result]:
    results = []
    for mode, env in MODES.items():
        port = free_ports(1)[0]
        url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "gvloop", "agent-b", "serve"]
        command += ["--model", model_dir, "--port", str(port)]
        with Launcher(logs, echo=False) as launcher:
            env = {**env, "HF_HUB_OFFLINE": "1", "GVLOOP_VERIFIER_JUDGE_REASONING": "true"}
            launcher.start(Component("verifier", command, env, f"{url}/health", 300))
            launcher.wait_ready()
            for name, (with_reference, method) in WORKLOADS.items():
                batch = workload(requests, with_reference, method)
                before = judge_counters(httpx.get(f"{url}/metrics").text)
                seconds, latencies = asyncio.run(drive(url, batch, concurrency))
                after = judge_counters(httpx.get(f"{url}/metrics").text)
                passes, prompts = after[0] - before[0], after[1] - before[1]
                cuts = statistics.quantiles(latencies, n=20)
                results.append(
                    Result(
                        model_name,
                        name,
                        mode,
                        len(batch) / seconds,
                        statistics.median(latencies),
                        cuts[18],
                        prompts / max(passes, 1),
                    )
                )
                print(f"  {model_name} {name:<20} {mode:<13} {results[-1].per_s:8.1f}/s")
    return results


def table(results: list[Result]) -> str:
    lines = [
        "| model | workload | mode | verifications/s | p50 ms | p95 ms | judge batch | speed-up |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    baseline = {(r.model, r.workload): r.per_s for r in results if r.mode == "one at a time"}
    for r in results:
        ratio = r.per_s / baseline[(r.model, r.workload)]
        lines.append(
            f"| {r.model} | {r.workload} | {r.mode} | {r.per_s:.1f} | {r.p50_ms:.0f} | "
            f"{r.p95_ms:.0f} | {r.judge_batch:.1f} | x{ratio:.2f} |"
        )
    return "\n".join(lines)


def main(
    models: Annotated[str, typer.Option(help="Comma-separated: tiny, default, or dirs.")] = "tiny",
    requests: Annotated[int, typer.Option(help="Requests per workload and mode.")] = 128,
    concurrency: Annotated[int, typer.Option(help="Clients with a request in flight.")] = 16,
) -> None:
    common = CommonSettings()
    with tempfile.TemporaryDirectory() as tmp:
        results: list[Result] = []
        for name in models.split(","):
            if name == "tiny":
                # The tests' tiny model; the repository root is not on the path of a script.
                sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
                from gvloop.tiny_model import make_tiny_model

                model_dir = str(make_tiny_model(Path(tmp) / "tiny", data_dir=common.data_dir))
            else:
                model_dir = resolve_model(name, common.data_dir)
            results += measure(name, model_dir, requests, concurrency, Path(tmp) / "logs")
    print(f"\n{requests} requests per row, {concurrency} in flight; baseline: one at a time")
    print(table(results))


if __name__ == "__main__":
    typer.run(main)
