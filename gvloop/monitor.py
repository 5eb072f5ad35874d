"""Fills a run's `RunState` from what the components publish, every couple of seconds: the
queue's depth (Redis), the trainer's JSON lines (steps, swaps), the generator's counters; and
writes the run's TensorBoard files as the trainer's lines and the held-out points come in."""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from pathlib import Path
from typing import Any

import httpx
from redis.exceptions import RedisError

from gvloop.runstate import RunState
from gvloop.status import parse_metrics
from services.queue import SampleQueue
from trainer.metrics import TensorBoardSink

logger = logging.getLogger(__name__)

RATE_WINDOW_S = 30.0


class Monitor:
    def __init__(
        self,
        state: RunState,
        trainer_jsonl: Path,
        generator_metrics_url: str,
        queue: SampleQueue | None,
        tensorboard_dir: Path,
        jsonl_offset: int = 0,
    ) -> None:
        """`jsonl_offset`: where in `trainer_jsonl` this run's events start (a resumed run's
        earlier ones were shown when they happened)."""
        self.state = state
        self.trainer_jsonl = trainer_jsonl
        self.generator_metrics_url = generator_metrics_url
        self.queue = queue
        self.tensorboard = TensorBoardSink(tensorboard_dir)
        self.http = httpx.AsyncClient(timeout=2.0)
        self._jsonl_offset = jsonl_offset
        self._points_written = 0
        # (monotonic, samples generated): the rate is over the last 30s, since samples come
        # back a request (64) at a time
        self._generated: deque[tuple[float, float]] = deque()

    async def poll(self) -> None:
        """One round; a component that does not answer yet is skipped, not an error."""
        self._read_trainer_lines()
        self._write_new_points()
        await self._read_queue()
        await self._read_generator()

    def _read_trainer_lines(self) -> None:
        if not self.trainer_jsonl.exists():
            return
        with self.trainer_jsonl.open("rb") as lines:
            lines.seek(self._jsonl_offset)
            chunk = lines.read()
        # only whole lines: the trainer may be half-way through writing the last one
        whole = chunk[: chunk.rfind(b"\n") + 1]
        self._jsonl_offset += len(whole)
        for raw in whole.splitlines():
            try:
                self._trainer_event(json.loads(raw))
            except json.JSONDecodeError:
                logger.warning("unreadable line in %s: %r", self.trainer_jsonl, raw[:200])

    def _trainer_event(self, event: dict[str, Any]) -> None:
        self.tensorboard.record(event)
        kind = event.get("event")
        if kind == "step":
            self.state.step = event
        elif kind == "swap" and event.get("outcome") == "ok":
            self.state.swap = event
            stopped = ""
            if event.get("stopped_s") is not None:
                self.state.pauses[event["version"]] = event["stopped_s"]
                stopped = f", generation stopped {event['stopped_s']:.2f}s"
            self.state.event(
                f"hot swap: agent A serves v{event['version']} (trainer step "
                f"{self.tensorboard.step}), POST /weights took {event['seconds']:.1f}s{stopped}"
            )
        elif kind == "swap":
            self.state.event(
                f"hot swap to v{event.get('version')} {event.get('outcome')}: "
                f"{str(event.get('detail'))[:120]}"
            )

    def _write_new_points(self) -> None:
        for point in self.state.curve[self._points_written :]:
            values = {"heldout/accuracy": point.accuracy, "heldout/stderr": point.stderr}
            if point.distinct_fraction is not None:
                values["heldout/distinct_fraction"] = point.distinct_fraction
            if point.pass_at_k is not None:
                values[f"heldout/pass_at_{point.passk_k}"] = point.pass_at_k
            self.tensorboard.scalars(self.tensorboard.step, values)
        self._points_written = len(self.state.curve)

    async def _read_queue(self) -> None:
        if self.queue is None:
            return
        try:
            self.state.queue = await self.queue.stats()
            self.state.queue_bound = self.queue.bound
        except RedisError:
            # before the trainer creates its consumer group, XPENDING has no group to read
            self.state.queue = None

    async def _read_generator(self) -> None:
        try:
            response = await self.http.get(self.generator_metrics_url)
        except httpx.TransportError:
            return
        if response.status_code != 200:
            return
        metrics = parse_metrics(response.text)
        if "gvloop_generator_weight_version" in metrics:
            self.state.served_version = int(metrics["gvloop_generator_weight_version"])
        generated = metrics.get("gvloop_generator_samples_total", 0.0)
        now = time.monotonic()
        self._generated.append((now, generated))
        while now - self._generated[0][0] > RATE_WINDOW_S:
            self._generated.popleft()
        then, before = self._generated[0]
        if now - then >= 1.0:
            self.state.generated_per_s = (generated - before) / (now - then)
        self.state.generated = generated

    def finish(self) -> None:
        """Once every component has stopped: read what came in since the last round (the
        trainer's last step and checkpoint come as it stops), then close the event file."""
        self._read_trainer_lines()
        self._write_new_points()
        self.tensorboard.close()

    async def aclose(self) -> None:
        """Close the clients (on the event loop they were made on)."""
        await self.http.aclose()
        if self.queue is not None:
            await self.queue.aclose()
