"""The demo's curve: standard errors, the table, and the files a run leaves behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gvloop.curve import EvalPoint, curve_table, plot_curve
from gvloop.demo import Demo, DemoConfig, Served


def point(version: int, correct: int, **extra: object) -> EvalPoint:
    return EvalPoint(
        version=version,
        at_s=60.0 * version,
        samples_fed=64 * version,
        problems=100,
        correct=correct,
        **extra,
    )


def test_standard_error_is_binomial() -> None:
    assert point(0, 20).stderr == pytest.approx((0.2 * 0.8 / 100) ** 0.5)
    assert point(1, 0).stderr == 0.0


def test_table_shows_every_point_with_its_error_and_diversity() -> None:
    curve = [
        point(0, 20),
        point(1, 55, sampled=64, sampled_correct=32, distinct_fraction=0.5, swap_stopped_s=0.12),
        point(2, 60, swap_stopped_s=0.2),
    ]
    table = curve_table(curve)
    assert "| v0 | 0 | 0 | 20.0% ± 4.0 (100) | - | - | - |" in table
    assert "| v1 | 60 | 64 | 55.0% ± 5.0 (100) | 50% | 0.50 | 0.12s |" in table
    assert table.endswith(
        "Generation stopped by the hot swaps: p50 0.16s, p95 0.20s, max 0.20s over 2"
    )


def test_plot_is_a_png(tmp_path: Path) -> None:
    curve = [point(0, 20), point(1, 55, distinct_fraction=0.6)]
    plot_curve(curve, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.dumps([p.model_dump() for p in curve])  # the curve's JSON form needs no custom encoder


async def test_a_point_left_for_later_is_placed_but_not_evaluated(tmp_path: Path) -> None:
    # nothing listens at these URLs: a point left for later asks nothing of the services
    config = DemoConfig(live_eval=False)
    demo = Demo(config, "http://127.0.0.1:9", "http://127.0.0.1:9", "http://127.0.0.1:9", tmp_path)
    try:
        served = Served(at_s=95.0, samples_fed=192, checkpoint_dir="/ckpt/step_00000001")
        point = await demo.point("model", 1, served)
    finally:
        await demo.aclose()
    assert (point.version, point.at_s, point.samples_fed) == (1, 95.0, 192)
    assert point.checkpoint_dir == "/ckpt/step_00000001"
    assert point.problems == 0  # for the learning benchmark to evaluate, off the clock
    assert "not evaluated" in curve_table([point])
