"""`gvloop status`'s reading of Prometheus text and its table rows."""

from __future__ import annotations

import io

from rich.console import Console

from gvloop.status import ComponentStatus, figures, parse_metrics, status_table

TRAINER_METRICS = """\
# HELP gvloop_trainer_step Optimizer steps taken.
# TYPE gvloop_trainer_step gauge
gvloop_trainer_step 12.0
# HELP gvloop_trainer_loss Batch loss and its parts (total, ce, reward, penalty).
# TYPE gvloop_trainer_loss gauge
gvloop_trainer_loss{part="total"} 1.25
gvloop_trainer_loss{part="ce"} 1.5
# HELP gvloop_trainer_step_seconds Time of one optimizer step.
# TYPE gvloop_trainer_step_seconds histogram
gvloop_trainer_step_seconds_bucket{le="1.0"} 3.0
gvloop_trainer_step_seconds_count 12.0
gvloop_trainer_step_seconds_sum 20.5
"""

GENERATOR_METRICS = """\
# TYPE gvloop_generator_samples_total counter
gvloop_generator_samples_total{queued="true"} 60.0
gvloop_generator_samples_total{queued="false"} 4.0
"""


def test_labelled_series_are_kept_apart_and_summed() -> None:
    metrics = parse_metrics(TRAINER_METRICS + GENERATOR_METRICS)
    assert metrics["gvloop_trainer_step"] == 12
    assert metrics["gvloop_trainer_loss{part=total}"] == 1.25
    # a counter's outcomes add up to its total
    assert metrics["gvloop_generator_samples_total"] == 64
    assert metrics["gvloop_generator_samples_total{queued=true}"] == 60
    # histogram buckets are no figure anyone reads in a table
    assert not any(key.endswith("_bucket") for key in metrics)
    assert metrics["gvloop_trainer_step_seconds_count"] == 12


def test_rows_show_key_figures_and_a_component_that_is_down() -> None:
    trainer = ComponentStatus(
        name="trainer",
        url="http://127.0.0.1:8003/metrics",
        state="ok",
        healthy=True,
        metrics=parse_metrics(TRAINER_METRICS),
    )
    assert figures(trainer) == "step 12, loss 1.25"
    down = ComponentStatus(
        name="engine",
        url="http://127.0.0.1:8000/health",
        state="down (ConnectError)",
        healthy=False,
    )
    assert figures(down) == "-"
    screen = Console(file=io.StringIO(), width=200)
    screen.print(status_table([trainer, down]))
    text = screen.file.getvalue()
    assert "step 12, loss 1.25" in text and "down (ConnectError)" in text
