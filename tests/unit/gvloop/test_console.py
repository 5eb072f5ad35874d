"""The run's console: the plain lines a CI log gets, and the live panel a terminal gets, from the
same state."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console

from gvloop.console import LiveConsole, PlainConsole, queue_line, swap_line, trainer_line
from gvloop.curve import EvalPoint
from gvloop.runstate import RunState
from services.queue import QueueStats


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def training_state(tmp_path: Path, clock: FakeClock) -> RunState:
    """Two minutes into a ten-minute training budget."""
    state = RunState(tmp_path, budget_s=600, clock=clock)
    state.training_started = clock.now
    clock.now += 120
    state.phase = "training"
    state.queue = QueueStats(length=128, pending=64, oldest_pending_age_s=12.0, dead_letters=0)
    state.queue_bound = 128
    state.step = {
        "step": 7,
        "loss": 1.5,
        "ce": 1.25,
        "reward": -0.5,
        "penalty": 0.75,
        "accuracy": 0.31,
        "tokens_per_s": 812.0,
        "lr": 2e-5,
    }
    return state


def test_plain_console_prints_each_event_once_and_progress_once_a_minute(tmp_path: Path) -> None:
    out = io.StringIO()
    clock = FakeClock()
    state = training_state(tmp_path, clock)
    console = PlainConsole(state, out, progress_every_s=60)
    state.component("engine", "starting")  # not worth a line: it says nothing yet
    state.component("engine", "ready")
    console.tick()  # two minutes into training: a progress line
    clock.now += 59.5
    console.tick()  # and not again within the minute
    clock.now += 0.5
    console.tick()  # but once it has passed
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert lines[0].endswith("engine ready after 120s")  # since the state was made
    first, second = lines[1:]
    assert "training · 2m00s elapsed · 8m00s of training left" in first
    assert "full (128/128): waiting for the trainer" in first
    assert "step 7 · loss 1.500 (ce 1.250 reward -0.500 penalty 0.750)" in first
    assert "3m00s elapsed · 7m00s of training left" in second


def test_plain_console_is_silent_before_training(tmp_path: Path) -> None:
    out = io.StringIO()
    state = RunState(tmp_path, budget_s=600)
    console = PlainConsole(state, out, progress_every_s=0)
    console.tick()
    assert out.getvalue() == ""


def test_queue_with_room_shows_depth_and_oldest_pending(tmp_path: Path) -> None:
    state = training_state(tmp_path, FakeClock())
    state.queue = QueueStats(length=40, pending=32, oldest_pending_age_s=3.0, dead_letters=0)
    assert queue_line(state) == "40/128 queued, 32 being trained on, oldest pending 3s"
    state.feeders_waiting = True  # room is reserved by requests still generating
    assert queue_line(state) == "full (40/128 + being generated): waiting for the trainer"


def test_trainer_line_shows_the_mismatch_once_measured(tmp_path: Path) -> None:
    state = training_state(tmp_path, FakeClock())
    assert "mismatch" not in trainer_line(state)  # a step of samples without log-probs
    assert state.step is not None
    state.step["mismatch_kl"] = 2.5e-5
    assert trainer_line(state).endswith("· lr 2.0e-05 · mismatch kl 2.5e-05")


def test_swap_line_shows_the_generators_phase_timings(tmp_path: Path) -> None:
    state = training_state(tmp_path, FakeClock())
    detail = {"version": 3, "timings": {"pause_s": 0.025, "reload_s": 0.5, "total_s": 0.6}}
    state.swap = {"version": 3, "seconds": 0.7, "detail": json.dumps(detail)}
    assert swap_line(state) == "v3: POST /weights 0.70s (pause 0.03s, reload 0.50s, total 0.60s)"
    state.swap["detail"] = "engine 1 failed"  # a detail that is no JSON: the time alone
    assert swap_line(state) == "v3: POST /weights 0.70s"
    state.pauses = {1: 0.1, 2: 0.3, 3: 0.2}
    assert swap_line(state).endswith(
        " · generation stopped p50 0.20s, p95 0.29s, max 0.30s over 3 swaps"
    )


def test_live_panel_shows_components_queue_trainer_and_curve(tmp_path: Path) -> None:
    state = training_state(tmp_path, FakeClock())
    screen = Console(file=io.StringIO(), width=160, force_terminal=False)
    live = LiveConsole(state, screen)
    state.component("engine", "ready")
    state.component("trainer", "starting")
    state.held_out(EvalPoint(version=0, at_s=0, samples_fed=0, problems=100, correct=20))
    sampled = {"passk_n": 4, "passk_k": 4, "passk_problems": 100, "pass_at_k": 0.8}
    sampled |= {"pass_at_k_stderr": 0.031, "heldout_distinct_fraction": 0.45}
    state.held_out(
        EvalPoint(version=1, at_s=60, samples_fed=64, problems=100, correct=61, **sampled)
    )
    screen.print(live.render())
    text = screen.file.getvalue()
    assert "engine ready" in text and "trainer starting" in text
    assert "full (128/128): waiting for the trainer" in text
    assert "v0 20.0%±4.0 → v1 61.0%±4.9, pass@4 80.0%" in text
    assert "gvloop · training · 2m00s elapsed · 8m00s of training left" in text
    assert "held-out v0: accuracy 20.0% ± 4.0 (100 problems)" in text  # the recent events
    assert (
        "held-out v1: accuracy 61.0% ± 4.9, pass@4 80.0% ± 3.1, 0.45 distinct per problem "
        "(100 problems), served from 60s of training" in text
    )
