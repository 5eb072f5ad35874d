"""Learning benchmark: held-out accuracy of agent A before training and after each hot swap,
with the fraction of distinct final answers per problem (diversity), for the default model on
the CPU defaults. The baseline is the same run's version 0.

    python bench/bench_learning.py --time-budget 900
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
    time_budget: Annotated[float, typer.Option(help="Seconds of training.")] = 900,
    heldout: Annotated[int, typer.Option(help="Held-out problems.")] = 100,
) -> None:
    common = CommonSettings()
    setup_logging(common.log_level)
    started = time.monotonic()
    config = DemoConfig(time_budget_s=time_budget, heldout_size=heldout)
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
