"""What `gvloop up` shows while it runs: a live rich panel on a terminal, or, without one (CI, a
pipe, `docker compose logs`), a plain line per event and a progress line every minute. Both
render the same `RunState`."""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from typing import Protocol, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from gvloop.curve import EvalPoint
from gvloop.runstate import RunState
from services.spread import Spread

COMPONENT_STYLE = {
    "starting": "yellow",
    "ready": "green",
    "exited": "red",
    "finished": "blue",
    "restarting": "magenta",
}


class RunConsole(Protocol):
    def start(self) -> None: ...
    def tick(self) -> None:
        """The state changed (called after each monitor round)."""

    def stop(self) -> None: ...


def duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def clock(state: RunState) -> str:
    text = f"{state.phase} · {duration(state.elapsed_s)} elapsed"
    if (left := state.left_s) is not None:
        text += f" · {duration(left)} of training left"
    return text


def generation_line(state: RunState) -> str:
    parts = []
    if state.fed:
        correct = 100 * state.fed_correct / state.fed
        parts.append(f"fed {state.fed} samples ({correct:.0f}% correct)")
    if state.generated_per_s is not None:
        parts.append(f"{state.generated_per_s:.1f} samples/s")
    if state.served_version is not None:
        parts.append(f"serving v{state.served_version}")
    return " · ".join(parts) or "no samples yet"


def queue_line(state: RunState) -> str:
    if state.queue is None or state.queue_bound is None:
        return "no consumer group yet"
    depth = f"{state.queue.length}/{state.queue_bound}"
    if state.queue_full:
        # the generator counts samples still being generated against the bound too
        taken = depth if state.queue.length >= state.queue_bound else f"{depth} + being generated"
        return f"full ({taken}): waiting for the trainer"
    text = f"{depth} queued, {state.queue.pending} being trained on"
    if state.queue.oldest_pending_age_s is not None:
        text += f", oldest pending {state.queue.oldest_pending_age_s:.0f}s"
    return text


def trainer_line(state: RunState) -> str:
    s = state.step
    if s is None:
        return "no step yet"
    text = (
        f"step {s['step']} · loss {s['loss']:.3f} (ce {s['ce']:.3f} reward {s['reward']:.3f} "
        f"penalty {s['penalty']:.3f}) · acc {s['accuracy']:.2f} · "
        f"{s['tokens_per_s']:.0f} tok/s · lr {s['lr']:.1e}"
    )
    # the trained policy against the engine's on the batch's tokens (trainer.off_policy)
    if s.get("mismatch_kl") is not None:
        text += f" · mismatch kl {s['mismatch_kl']:.1e}"
    return text


def swap_line(state: RunState) -> str:
    if state.swap is None:
        return "none yet"
    text = f"v{state.swap['version']}: POST /weights {state.swap['seconds']:.2f}s"
    # the generator's answer, as the trainer recorded it, holds the swap's own phases
    try:
        timings = json.loads(state.swap.get("detail") or "{}").get("timings") or {}
    except (json.JSONDecodeError, AttributeError):
        timings = {}
    # phases under 5 ms say nothing a person needs
    phases = [f"{k.removesuffix('_s')} {v:.2f}s" for k, v in timings.items() if v and v >= 0.005]
    text = f"{text} ({', '.join(phases)})" if phases else text
    if spread := Spread.of(list(state.pauses.values())):
        text += f" · generation stopped {spread} swaps"
    return text


def curve_line(state: RunState) -> str:
    return " → ".join(point_text(p) for p in state.curve) or "not measured yet"


def point_text(point: EvalPoint) -> str:
    """`v3 61.0%±4.9`, with `, pass@4 80.0%` once the version's samples are measured."""
    text = f"v{point.version} {100 * point.accuracy:.1f}%±{100 * point.stderr:.1f}"
    if point.pass_at_k is not None:
        text += f", pass@{point.passk_k} {100 * point.pass_at_k:.1f}%"
    return text


def components_text(state: RunState) -> Text:
    """Each component's state, and how often it was restarted after a crash."""
    text = Text()
    for name, component_state in state.components.items():
        text.append(f"{name} ", style="bold")
        text.append(component_state, style=COMPONENT_STYLE[component_state])
        if (restarts := state.restarts.get(name)) is not None:
            text.append(f", {restarts.summary()}", style="magenta")
        text.append("  ")
    return text


class PlainConsole:
    """A timestamped line per event, and every `progress_every_s` a progress line: little enough
    for a CI log, enough to see that the run moves and how long it has left."""

    def __init__(self, state: RunState, out: TextIO = sys.stdout, progress_every_s: float = 60):
        self.state = state
        self.out = out
        self.progress_every_s = progress_every_s
        self._last_progress: float | None = None
        state.listeners.append(self.line)

    def line(self, text: str) -> None:
        self.out.write(f"{time.strftime('%H:%M:%S')} {text}\n")
        self.out.flush()

    def start(self) -> None:
        self.line(f"component logs: {self.state.run_dir / 'logs'} (--verbose shows them here)")

    def tick(self) -> None:
        if self.state.training_started is None:
            return
        # the first one a full interval into training, when there is progress to show
        now = self.state.clock()
        since = self._last_progress or self.state.training_started
        if now - since < self.progress_every_s:
            return
        self._last_progress = now
        self.line(
            f"{clock(self.state)} | {generation_line(self.state)} | queue "
            f"{queue_line(self.state)} | {trainer_line(self.state)}"
        )

    def stop(self) -> None:
        """Nothing is left on screen to clear."""


class LiveConsole:
    """One panel, redrawn twice a second by rich's own thread (so that it moves while the
    launcher blocks on a health check), the last few events under it."""

    def __init__(self, state: RunState, console: Console | None = None) -> None:
        self.state = state
        self.console = console or Console()
        self.events: deque[str] = deque(maxlen=6)
        self.live = Live(
            get_renderable=self.render, console=self.console, refresh_per_second=2, transient=False
        )
        state.listeners.append(self.line)

    def line(self, text: str) -> None:
        self.events.append(f"{time.strftime('%H:%M:%S')} {text}")

    def render(self) -> Panel:
        state = self.state
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column()
        grid.add_row("components", components_text(state))
        grid.add_row("generation", generation_line(state))
        queue_style = "yellow" if state.queue_full else ""
        grid.add_row("queue", Text(queue_line(state), style=queue_style))
        grid.add_row("trainer", trainer_line(state))
        grid.add_row("last swap", swap_line(state))
        grid.add_row("held-out", curve_line(state))
        grid.add_row("logs", str(state.run_dir / "logs"))
        body = Group(grid, Text(""), Text("\n".join(self.events), style="dim"))
        return Panel(body if self.events else grid, title=f"gvloop · {clock(state)}")

    def start(self) -> None:
        self.live.start()

    def tick(self) -> None:
        """rich's thread redraws on its own."""

    def stop(self) -> None:
        self.live.stop()


def open_console(state: RunState, interactive: bool | None = None) -> RunConsole:
    """The live panel on a terminal, plain lines otherwise (`interactive` decides in tests)."""
    console = Console()
    if interactive if interactive is not None else console.is_terminal:
        return LiveConsole(state, console)
    return PlainConsole(state)
