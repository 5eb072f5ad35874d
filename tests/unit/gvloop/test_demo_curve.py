"""The demo's curve: standard errors, the table with and without the held-out samples'
pass@k, a curve.json written before pass@k, and the files a run leaves behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gvloop.curve import EvalPoint, curve_table, heldout_summary, load_curve, plot_curve
from gvloop.demo import Demo, DemoConfig, Served
from gvloop.gap import compute_gap, reference_gap


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


def test_the_swap_summary_counts_the_swaps_of_versions_without_a_point() -> None:
    # v2 and v3 were swapped in while v1 was being evaluated; v4 was measured next
    curve = [
        point(0, 20),
        point(1, 55, swap_stopped_s=0.1, swaps_stopped_s=[0.1]),
        point(4, 60, swap_stopped_s=0.4, swaps_stopped_s=[0.2, 0.3, 0.4]),
    ]
    assert curve_table(curve).endswith(
        "Generation stopped by the hot swaps: p50 0.25s, p95 0.39s, max 0.40s over 4"
    )


SAMPLED = {
    "passk_n": 4,
    "passk_k": 4,
    "passk_problems": 100,
    "pass_at_k": 0.8,
    "pass_at_k_stderr": 0.031,
    "heldout_distinct_fraction": 0.45,
    "heldout_distinct_stderr": 0.02,
}


def test_table_shows_pass_at_k_and_the_training_groups_once_measured() -> None:
    curve = [
        point(0, 43, **SAMPLED),
        point(
            1,
            61,
            **SAMPLED,
            sampled=64,
            sampled_correct=32,
            distinct_fraction=0.5,
            all_wrong_fraction=0.125,
            all_right_fraction=0.25,
        ),
        point(2, 60),  # measured with passk_n 0: no samples
    ]
    table = curve_table(curve).splitlines()
    assert table[0] == (
        "| version | served from (s of training) | samples fed | held-out accuracy (pass@1) "
        "| held-out pass@4 (n=4) | held-out distinct answers | its training samples correct "
        "| distinct answers (training) | training problems all wrong / all right "
        "| its swap stopped generation |"
    )
    assert table[1] == "|---|---|---|---|---|---|---|---|---|---|"
    assert table[2] == (
        "| v0 | 0 | 0 | 43.0% ± 5.0 (100) | 80.0% ± 3.1 (100) | 0.45 ± 0.02 | - | - | - | - |"
    )
    assert table[3] == (
        "| v1 | 60 | 64 | 61.0% ± 4.9 (100) | 80.0% ± 3.1 (100) | 0.45 ± 0.02 | 50% | 0.50 "
        "| 12% / 25% | - |"
    )
    assert table[4] == "| v2 | 120 | 128 | 60.0% ± 4.9 (100) | - | - | - | - | - | - |"


def test_a_curve_of_several_ks_names_each_points_k() -> None:
    curve = [point(0, 43, **SAMPLED), point(1, 61, **SAMPLED | {"passk_k": 2})]
    table = curve_table(curve)
    assert "| held-out pass@k |" in table
    assert "| pass@2 n=4: 80.0% ± 3.1 (100) |" in table


def test_held_out_summary_line() -> None:
    assert heldout_summary(point(3, 61)) == "accuracy 61.0% ± 4.9 (100 problems)"
    assert heldout_summary(point(3, 61, **SAMPLED)) == (
        "accuracy 61.0% ± 4.9, pass@4 80.0% ± 3.1, 0.45 distinct per problem (100 problems)"
    )
    assert heldout_summary(point(3, 61, **SAMPLED | {"passk_problems": 50})) == (
        "accuracy 61.0% ± 4.9 (100 problems), pass@4 80.0% ± 3.1, 0.45 distinct per problem "
        "(first 50)"
    )


def test_a_curve_saved_before_pass_at_k_still_loads(tmp_path: Path) -> None:
    # what Demo.save wrote before the held-out samples: resumed runs read it back
    rows = [
        {"version": 0, "at_s": 0.0, "samples_fed": 0, "problems": 100, "correct": 43,
         "checkpoint_dir": None, "sampled": 0, "sampled_correct": 0,
         "distinct_fraction": None, "swap_stopped_s": None, "accuracy": 0.43, "stderr": 0.0495},
        {"version": 1, "at_s": 127.0, "samples_fed": 224, "problems": 100, "correct": 58,
         "checkpoint_dir": "/ckpt/step_00000001", "sampled": 160, "sampled_correct": 61,
         "distinct_fraction": 0.54, "swap_stopped_s": 0.05, "accuracy": 0.58, "stderr": 0.0494},
    ]  # fmt: skip
    (tmp_path / "curve.json").write_text(json.dumps(rows))
    curve = load_curve(tmp_path / "curve.json")
    assert [p.version for p in curve] == [0, 1]
    assert curve[1].distinct_fraction == 0.54 and curve[1].pass_at_k is None
    assert curve[1].all_wrong_fraction is None and curve[1].passk_n is None
    table = curve_table(curve)
    assert "pass@" not in table.split("\n")[0].replace("(pass@1)", "")  # no pass@k columns
    assert "| v1 | 127 | 224 | 58.0% ± 4.9 (100) | 38% | 0.54 | 0.05s |" in table
    plot_curve(curve, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_with_pass_at_k_is_a_png(tmp_path: Path) -> None:
    curve = [
        point(0, 43, **SAMPLED),
        point(1, 61, **SAMPLED, distinct_fraction=0.5),
        point(2, 60),  # a point without samples among them
    ]
    plot_curve(curve, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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


def test_pass_at_k_needs_k_samples() -> None:
    with pytest.raises(ValueError, match=r"passk_n \(2\) must be at least passk_k \(4\)"):
        DemoConfig(passk_n=2, passk_k=4)
    assert DemoConfig(passk_n=0, passk_k=4).passk_n == 0  # off
    assert DemoConfig(passk_n=8, passk_k=4).passk_n == 8


# 2 of 5 samples right; the judge keeps 0.9 (right) and 0.6 (wrong): tests/unit/gvloop/test_gap.py
RIGHT = [True, True, False, False, False]
GAP = {
    "gap_judge": compute_gap(RIGHT, [0.9, 0.4, 0.6, 0.2, 0.4], 0.5, "/models/tiny-seed0", [1, 2]),
    "gap_reference": reference_gap(RIGHT),
}


def test_the_gap_table_shows_the_judge_and_the_reference_once_measured() -> None:
    curve = [point(0, 43, **SAMPLED), point(1, 61, **SAMPLED, **GAP)]
    table = curve_table(curve).splitlines()
    assert "gap" not in table[0]  # the curve's own columns stay as they were
    gap = table[table.index("") + 1 :]
    assert gap[1] == (
        "| version | verifier | samples | raw accuracy | kept | kept accuracy | gap (points) "
        "| relative gap | verifier accuracy | AUC |"
    )
    # v0 was not judged: no row; the judge's model by its name, with its weight versions
    assert gap[3:] == [
        "| v1 | judge tiny-seed0, p >= 0.5 (weights v1, v2) | 5 | 40.0% | 2 | 50.0% | +10.0 "
        "| 0.17 | 60.0% | 0.75 |",
        "| v1 | reference (upper bound) | 5 | 40.0% | 2 | 100.0% | +60.0 | 1.00 | 100.0% | 1.00 |",
    ]
    assert "Generation-verification gap" not in curve_table(curve[:1])


def test_held_out_summary_line_with_the_gap() -> None:
    assert heldout_summary(point(3, 61, **SAMPLED, **GAP)) == (
        "accuracy 61.0% ± 4.9, pass@4 80.0% ± 3.1, 0.45 distinct per problem (100 problems); "
        "judge gap +10.0 points (relative 0.17): keeps 2/5 at p >= 0.5, 50.0% right vs 40.0% "
        "raw; judge accuracy 60.0%, AUC 0.75"
    )
    # nothing kept, every sample right: no gap, no relative gap, no AUC
    nothing = compute_gap([True, True], [0.1, 0.2], 0.5, "judge")
    assert heldout_summary(point(3, 61, **SAMPLED, gap_judge=nothing)).endswith(
        "; judge gap - (relative -): keeps 0/2 at p >= 0.5 vs 100.0% raw; judge accuracy 0.0%"
    )


def test_a_curve_with_the_gap_round_trips_through_json(tmp_path: Path) -> None:
    curve = [point(0, 43, **SAMPLED, **GAP)]
    (tmp_path / "curve.json").write_text(json.dumps([p.model_dump() for p in curve]))
    assert load_curve(tmp_path / "curve.json") == curve


def test_the_gap_needs_held_out_samples() -> None:
    with pytest.raises(ValueError, match="gap_threshold needs held-out samples"):
        DemoConfig(passk_n=0, gap_threshold=0.5)
    assert DemoConfig().gap_threshold is None  # off by default
    assert DemoConfig(gap_threshold=0.7).gap_threshold == 0.7
