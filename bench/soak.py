"""Soak and chaos run: the whole local stack (as `gvloop up` runs it, its launcher restarting
what dies) under a steady load through `POST /problems` and `/v1/chat/completions`, for
`--minutes`, while a fault injector seeded by `--seed` kills the trainer, the engine, the
generator and Redis, stops the verifier, fills the checkpoint disk and offers a corrupt
checkpoint to hot-swap. At the end it accounts for every sample and request and prints the
tables (faults and the worst recovery after each kind, samples, requests, memory slopes); the
exit code is 1 when an invariant broke (`bench/soak_kit/accounting.py` lists them).

    python bench/soak.py --minutes 30 --faults random --seed 1
    python bench/soak.py --minutes 3 --model tiny --gap 5,15       # what the test runs
    make soak MINUTES=30 SEED=1
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.soak_kit.chaos import KINDS
from bench.soak_kit.run import SoakConfig, run_soak
from services.logs import setup_logging


def parse_kinds(faults: str) -> tuple:
    """`random`: every kind; else a comma-separated subset of them."""
    if faults == "random":
        return KINDS
    chosen = tuple(k.strip() for k in faults.split(",") if k.strip())
    unknown = [k for k in chosen if k not in KINDS]
    if unknown or not chosen:
        raise typer.BadParameter(
            f"unknown faults {unknown}: 'random' or some of {', '.join(KINDS)}"
        )
    return chosen


def main(
    minutes: Annotated[float, typer.Option(help="Minutes of load and faults.")] = 30,
    faults: Annotated[
        str, typer.Option(help="'random' (every kind) or a comma list of kinds.")
    ] = "random",
    seed: Annotated[int, typer.Option(help="Seeds the fault schedule and the load.")] = 0,
    model: Annotated[str, typer.Option(help="'default', 'tiny' or a model dir.")] = "default",
    clients: Annotated[int, typer.Option(help="Concurrent clients.")] = 3,
    gap: Annotated[str, typer.Option(help="Seconds between faults: 'min,max'.")] = "20,90",
    stop: Annotated[
        str, typer.Option(help="Seconds the verifier stays stopped: 'min,max'.")
    ] = "8,20",
    disk_full: Annotated[
        str, typer.Option(help="Seconds the checkpoint disk stays full: 'min,max'.")
    ] = "10,30",
    timeout: Annotated[float, typer.Option(help="Each request's limit, seconds.")] = 120,
    bound: Annotated[float, typer.Option(help="Largest growth after warm-up, %.")] = 5.0,
    warmup: Annotated[
        float, typer.Option(help="Seconds of each process left out of its slope.")
    ] = 60,
    out: Annotated[Path | None, typer.Option(help="Run directory (default: a temp dir).")] = None,
) -> None:
    setup_logging("INFO")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    def pair(text: str) -> tuple[float, float]:
        low, high = (float(x) for x in text.split(","))
        return low, high

    config = SoakConfig(
        minutes=minutes,
        seed=seed,
        model=model,
        faults=parse_kinds(faults),
        clients=clients,
        timeout_s=timeout,
        gap_s=pair(gap),
        stop_s=pair(stop),
        disk_full_s=pair(disk_full),
        growth_bound_pct=bound,
        warmup_s=warmup,
        out_dir=out,
    )
    result = run_soak(config)
    print(f"\nsoak: {minutes:g} min, seed {seed}, model {model}; run dir {result.run_dir}\n")
    print(result.tables)
    print()
    if result.ok:
        print(f"all invariants held ({result.seconds:.0f}s)")
        return
    print("INVARIANTS BROKEN:")
    for problem in result.problems:
        print(f"  - {problem}")
    raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(main)
