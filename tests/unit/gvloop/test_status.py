"""`gvloop status`'s reading of Prometheus text and its table rows."""

from __future__ import annotations

import io

from rich.console import Console

from gvloop.status import (
    ComponentStatus,
    RedisStatus,
    alarm,
    figures,
    parse_metrics,
    redis_table,
    status_table,
)
from services.redis_checks import RedisFacts, judge

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


def test_a_trainer_whose_checkpoints_fail_is_not_healthy() -> None:
    failing = parse_metrics(
        "gvloop_trainer_step 14.0\n"
        "gvloop_trainer_checkpoint_failing 1.0\n"
        "gvloop_trainer_uncommitted_steps 4.0\n"
    )
    assert alarm(failing) == "checkpoints failing"
    row = ComponentStatus(name="trainer", url="", state="", healthy=False, metrics=failing)
    assert figures(row) == "step 14, uncommitted 4"
    # back to 0 once a checkpoint is written
    assert alarm(parse_metrics("gvloop_trainer_checkpoint_failing 0.0\n")) is None
    assert alarm({}) is None


def redis_rows(status: RedisStatus) -> tuple[str, dict[str, str]]:
    """The Redis table and its rows by setting."""
    screen = Console(file=io.StringIO(), width=400)
    screen.print(redis_table(status))
    text = screen.file.getvalue()
    return text, {line.split()[1]: line for line in text.splitlines() if "│" in line}


def test_redis_rows_say_what_to_verify_when_config_is_denied() -> None:
    facts = RedisFacts(
        version="7.2.4",
        maxmemory_policy="noeviction",
        maxmemory=0,
        appendonly=False,
        unreadable={"CONFIG GET": "unknown command `CONFIG`"},
    )
    found = judge(facts, "redis://redis:6379/0")
    text, rows = redis_rows(
        RedisStatus(url=found.url, state="unchecked", healthy=True, guarantees=found)
    )
    assert "│ redis://redis:6379/0 │ unchecked " in rows["server"], text
    assert "│ 7.2.4 " in rows["version"] and "│ ok " in rows["version"]
    assert "│ noeviction " in rows["maxmemory-policy"]
    assert [cell.strip() for cell in rows["persistence"].split("│")[2:4]] == [
        "no aof, rdb unknown",
        "unchecked: could not be read (CONFIG GET: unknown command `CONFIG`), verify by hand: "
        "appendonly yes (or at least an RDB `save` schedule)",
    ]


def test_a_redis_that_does_not_answer_is_one_row() -> None:
    text, rows = redis_rows(
        RedisStatus(url="redis://redis:6379/0", state="down (ConnectionError)", healthy=False)
    )
    assert list(rows) == ["server"], text
    assert "│ redis://redis:6379/0 │ down (ConnectionError) " in rows["server"]
