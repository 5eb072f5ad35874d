"""A live progress line at the bottom of the terminal (steps, loss, throughput, version), with
the log lines scrolling above it; nothing at all when stdout is not a terminal."""

from __future__ import annotations

import logging
import sys
from types import TracebackType

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from trainer.metrics import StepStats


class TrainProgress:
    def __init__(self, enabled: bool, total_steps: int, start_step: int) -> None:
        self.enabled = enabled
        self._progress: Progress | None = None
        self._total = total_steps or None  # None: an open-ended run, no bar
        self._start = start_step
        self._handlers: list[tuple[logging.StreamHandler, object]] = []

    def __enter__(self) -> TrainProgress:
        if not self.enabled:
            return self
        columns = [TextColumn("[bold]step {task.completed:.0f}")]
        if self._total:
            columns += [BarColumn(), TextColumn("{task.percentage:>3.0f}%")]
        columns += [TextColumn("{task.fields[status]}"), TimeElapsedColumn()]
        self._progress = Progress(*columns, transient=True)
        self._task = self._progress.add_task(
            "train", total=self._total, completed=self._start, status="waiting for samples"
        )
        self._progress.start()
        # Log handlers hold the real stdout; point them at rich's proxy (sys.stdout while the
        # display is live) so that log lines print above the display instead of through it.
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is sys.__stdout__:
                self._handlers.append((handler, handler.setStream(sys.stdout)))
        return self

    def update(self, s: StepStats) -> None:
        if self._progress is not None:
            status = (
                f"loss {s.loss:.3f} | acc {s.accuracy:.2f} | {s.tokens_per_s:.0f} tok/s | "
                f"v{s.version}"
            )
            self._progress.update(self._task, completed=s.step, status=status)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for handler, stream in self._handlers:
            handler.setStream(stream)  # type: ignore[arg-type]
        if self._progress is not None:
            self._progress.stop()
