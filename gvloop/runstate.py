"""What a run's console shows: one `RunState` that the launcher, the demo and the monitor fill
in, and that tells its listeners (a live panel, plain lines) about each event as it happens."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gvloop.curve import EvalPoint, heldout_summary
from gvloop.launcher import ComponentState
from gvloop.restarts import ComponentRestarts, Restart
from services.queue import QueueStats


@dataclass
class RunState:
    run_dir: Path
    budget_s: float | None = None
    """Seconds of training the demo runs for; None: until Ctrl-C."""
    clock: Callable[[], float] = time.monotonic
    """Seconds on the clock every time here is read from (a test's own, to render exact text)."""
    started: float = field(init=False)
    training_started: float | None = None
    training_ended: float | None = None
    phase: str = "starting"
    components: dict[str, ComponentState] = field(default_factory=dict)
    ready_after_s: dict[str, float] = field(default_factory=dict)
    restarts: dict[str, ComponentRestarts] = field(default_factory=dict)
    """The components the launcher restarted, and how often."""
    restarted_at: dict[str, float] = field(default_factory=dict)
    """The clock at each component's last restart."""
    # generation, as the demo's feeders saw it, and as the generator counts it
    fed: int = 0
    fed_correct: int = 0
    generated: float = 0.0
    generated_per_s: float | None = None
    served_version: int | None = None
    queue: QueueStats | None = None
    queue_bound: int | None = None
    feeders_waiting: bool = False
    """The demo's feeders hold back until the queue has room for a request."""
    step: dict[str, Any] | None = None
    """The trainer's last `step` JSON line (trainer/metrics.py StepStats)."""
    swap: dict[str, Any] | None = None
    """The trainer's last successful `swap` JSON line."""
    pauses: dict[int, float] = field(default_factory=dict)
    """Seconds each successful swap stopped generation, by the version it brought in."""
    curve: list[EvalPoint] = field(default_factory=list)
    listeners: list[Callable[[str], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.started = self.clock()

    def event(self, line: str) -> None:
        """Something happened that a person watching wants to know, in one line."""
        for listener in self.listeners:
            listener(line)

    def component(self, name: str, state: ComponentState) -> None:
        """The launcher's `on_state`."""
        self.components[name] = state
        if state == "ready" and name in self.restarted_at:
            again_s = self.clock() - self.restarted_at[name]
            self.event(f"{name} ready again, {again_s:.0f}s after it exited")
        elif state == "ready":
            self.ready_after_s[name] = self.clock() - self.started
            self.event(f"{name} ready after {self.ready_after_s[name]:.0f}s")
        elif state == "finished":
            self.event(f"{name} finished its work and stopped")
        elif state == "exited":
            self.event(f"{name} exited: see {self.run_dir / 'logs' / name}.log")

    def restarted(self, restart: Restart) -> None:
        """The launcher's `on_restart`."""
        before = self.restarts.get(restart.component)
        self.restarts[restart.component] = ComponentRestarts(
            count=before.count + 1 if before else 1,
            last_returncode=restart.returncode,
            last_at=restart.at,
        )
        self.restarted_at[restart.component] = self.clock()
        self.event(restart.line)

    def held_out(self, point: EvalPoint) -> None:
        self.curve.append(point)
        self.event(
            f"held-out v{point.version}: {heldout_summary(point)}, served from "
            f"{point.at_s:.0f}s of training, {point.samples_fed} samples fed by then"
        )

    @property
    def elapsed_s(self) -> float:
        return self.clock() - self.started

    @property
    def training_s(self) -> float:
        if self.training_started is None:
            return 0.0
        return (self.training_ended or self.clock()) - self.training_started

    @property
    def left_s(self) -> float | None:
        """Seconds of training left; None before and after training, or without a budget."""
        if self.budget_s is None or self.training_started is None or self.training_ended:
            return None
        return max(0.0, self.budget_s - self.training_s)

    @property
    def queue_full(self) -> bool:
        """No room in the queue for another request: the generator answers 429."""
        return self.feeders_waiting or (
            self.queue is not None
            and self.queue_bound is not None
            and self.queue.length >= self.queue_bound
        )
