"""Learning benchmark: held-out accuracy of agent A before training and after each hot swap,
with the fraction of distinct final answers per problem (diversity), for the default model on
the CPU defaults. The baseline is the same run's version 0.

    python bench/bench_learning.py --swaps 4 --time-budget 1800
"""

from __future__ import annotations

import time
from typing import Annotated

import typer

from gvloop.demo import DemoConfig, curve_table
from gvloop.stack import StackPorts, demo_stack, run_stack
from services.logs import setup_logging
from services.settings import CommonSettings


def main(
    swaps: Annotated[int, typer.Option(help="Hot swaps to measure after.")] = 4,
    time_budget: Annotated[float, typer.Option(help="Stop feeding after (s).")] = 1800,
    heldout: Annotated[int, typer.Option(help="Held-out problems.")] = 100,
    diversity_samples: Annotated[int, typer.Option(help="Samples per problem.")] = 4,
) -> None:
    setup_logging()
    started = time.monotonic()
    config = DemoConfig(
        swaps=swaps,
        time_budget_s=time_budget,
        heldout_size=heldout,
        diversity_samples=diversity_samples,
    )
    common = CommonSettings()
    common, model, env = demo_stack(common, common.model)
    curve = run_stack(common, model, StackPorts(), config, env=env)
    assert curve is not None
    print(f"\nmodel {model}, {config.model_dump_json()}, {env}")
    print(curve_table(curve))
    first, last = curve[0], curve[-1]
    print(
        f"accuracy {100 * first.accuracy:.1f}% -> {100 * last.accuracy:.1f}% "
        f"(x{last.accuracy / max(first.accuracy, 1e-9):.2f}) in {time.monotonic() - started:.0f}s"
    )


if __name__ == "__main__":
    typer.run(main)
