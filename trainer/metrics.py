"""What the trainer reports, three ways: one readable log line per event, the same numbers as a
JSON line in a file, and Prometheus metrics (`gvloop_trainer_*`) on /metrics; `TensorBoardSink`
turns those JSON lines into TensorBoard scalars (`gvloop up` does, for its run directory)."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from services.spread import Spread

logger = logging.getLogger("trainer")

SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# a swap's pause is meant to stay well under a second
PAUSE_BUCKETS = (0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 1, 2, 5)


@dataclass(frozen=True)
class StepStats:
    step: int
    seconds: float
    loss: float
    ce: float
    reward: float
    penalty: float
    feedback: float  # mean S over the batch
    accuracy: float  # mean C over the batch
    samples: int
    skipped: int  # samples set aside (stale, unusable, no contrast) while gathering the batch
    tokens: int  # completion tokens trained on
    tokens_per_s: float
    lr: float
    grad_norm: float
    lag: int  # samples in the stream not yet delivered to any consumer
    staleness: int  # served version minus the oldest weight version in the batch
    version: int  # weight version agent A serves
    # the trained policy against the samplers (trainer.off_policy); None: nothing measured
    mismatch_kl: float | None
    ratio_outside: float | None  # share of tokens with p_trainer / p_sampler outside [1/c, c]
    masked: int  # samples the off-policy correction left out of the loss
    mismatch_kl_by_behind: dict[str, float]  # versions behind ("k", the last "k+") -> KL
    # with an exploration bonus (trainer.exploration); None: exploration off
    explore: float | None = None  # the loss' exploration term, batch mean
    bonus: float | None = None  # mean B_i over the batch, before its coefficient


def step_line(s: StepStats) -> str:
    """`step 42 | 1.9s | loss 1.2340 (ce 1.1000 reward 0.2000 penalty 0.3300) | ...`"""
    explore = bonus = ""
    if s.explore is not None and s.bonus is not None:
        explore, bonus = f" explore {s.explore:.4f}", f" | bonus {s.bonus:.3f}"
    return (
        f"step {s.step} | {s.seconds:.1f}s | loss {s.loss:.4f} (ce {s.ce:.4f} "
        f"reward {s.reward:.4f} penalty {s.penalty:.4f}{explore}){bonus} | "
        f"feedback {s.feedback:.3f} | "
        f"acc {s.accuracy:.3f} | {s.samples} samples ({s.skipped} skipped) "
        f"{s.tokens_per_s:.0f} tok/s | "
        f"lr {s.lr:.2e} gnorm {s.grad_norm:.3f} | lag {s.lag} | stale {s.staleness} | "
        f"v{s.version}{mismatch_text(s)}"
    )


def mismatch_text(s: StepStats) -> str:
    """` | mismatch kl 1.2e-04 (0.1% outside)`, and the samples masked if any; empty when
    nothing was measured."""
    if s.mismatch_kl is None or s.ratio_outside is None:
        return ""
    masked = f", {s.masked} masked" if s.masked else ""
    return f" | mismatch kl {s.mismatch_kl:.1e} ({s.ratio_outside:.1%} outside{masked})"


class TrainerMetrics:
    """The trainer's Prometheus registry (one per instance: tests build several) and its JSON
    lines file."""

    def __init__(self, jsonl_path: Path) -> None:
        self.jsonl_path = jsonl_path
        jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        self.registry = r = CollectorRegistry()
        self.step = Gauge("gvloop_trainer_step", "Optimizer steps taken.", registry=r)
        self.loss = Gauge(
            "gvloop_trainer_loss",
            "Batch loss and its parts (total, ce, reward, penalty; explore with exploration on).",
            ["part"],
            registry=r,
        )
        self.feedback = Gauge("gvloop_trainer_feedback", "Mean S of the last batch.", registry=r)
        self.bonus = Gauge(
            "gvloop_trainer_exploration_bonus",
            "Mean exploration bonus B of the last batch (with exploration on).",
            registry=r,
        )
        self.accuracy = Gauge("gvloop_trainer_accuracy", "Mean C of the last batch.", registry=r)
        self.throughput = Gauge(
            "gvloop_trainer_tokens_per_second", "Completion tokens per second.", registry=r
        )
        self.lr = Gauge("gvloop_trainer_learning_rate", "Learning rate.", registry=r)
        self.grad_norm = Gauge("gvloop_trainer_grad_norm", "Norm before clipping.", registry=r)
        self.lag = Gauge("gvloop_trainer_queue_lag", "Undelivered samples.", registry=r)
        self.staleness = Gauge(
            "gvloop_trainer_batch_staleness", "Versions behind, oldest sample.", registry=r
        )
        self.version = Gauge(
            "gvloop_trainer_weight_version", "Weight version agent A serves.", registry=r
        )
        self.mismatch_kl = Gauge(
            "gvloop_trainer_mismatch_kl",
            "KL(sampler || trainer) on the last batch's tokens (k3 estimate), over all of them "
            "and by how many versions behind their sampler was.",
            ["versions_behind"],
            registry=r,
        )
        self.ratio_outside = Gauge(
            "gvloop_trainer_ratio_outside",
            "Share of the last batch's tokens whose p_trainer / p_sampler is outside the cap.",
            registry=r,
        )
        self.masked = Counter(
            "gvloop_trainer_masked_samples",
            "Samples the off-policy correction left out of the loss.",
            registry=r,
        )
        self.samples = Counter("gvloop_trainer_samples", "Samples trained on.", registry=r)
        self.tokens = Counter("gvloop_trainer_tokens", "Completion tokens trained.", registry=r)
        self.skipped = Counter(
            "gvloop_trainer_skipped_samples",
            "Samples not trained on, by reason.",
            ["reason"],
            registry=r,
        )
        self.step_seconds = Histogram(
            "gvloop_trainer_step_seconds",
            "Time of one optimizer step.",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.checkpoint_seconds = Histogram(
            "gvloop_trainer_checkpoint_seconds",
            "Time to write one checkpoint.",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.checkpoint_failing = Gauge(
            "gvloop_trainer_checkpoint_failing",
            "1 while checkpoints cannot be written (disk full, ...: the last try failed), else 0.",
            registry=r,
        )
        self.checkpoint_failures = Counter(
            "gvloop_trainer_checkpoint_failures",
            "Checkpoint writes that failed and left nothing behind; each is tried again.",
            registry=r,
        )
        self.uncommitted_steps = Gauge(
            "gvloop_trainer_uncommitted_steps",
            "Steps taken since the last checkpoint written: their samples are unacknowledged.",
            registry=r,
        )
        self.swaps = Counter(
            "gvloop_trainer_swaps",
            "Hot-swap requests to agent A, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.swap_seconds = Histogram(
            "gvloop_trainer_swap_seconds",
            "Time of a successful POST /weights.",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.generation_stopped = Histogram(
            "gvloop_trainer_swap_generation_stopped_seconds",
            "How long each successful swap stopped generation on agent A (its pause).",
            buckets=PAUSE_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "gvloop_trainer_errors", "Recovered failures, by kind.", ["kind"], registry=r
        )
        self.pauses: list[float] = []
        """Generation stopped by each successful swap of this run, in seconds."""
        self._jsonl_failing = False

    def serve(self, host: str, port: int) -> None:
        """Serve /metrics from a daemon thread (it dies with the process)."""
        start_http_server(port, addr=host, registry=self.registry)
        logger.info(
            "metrics on http://%s:%d/metrics, JSON lines in %s", host, port, self.jsonl_path
        )

    def event(self, name: str, **fields: Any) -> None:
        """Append one JSON line: {"event": name, "time": ..., **fields}."""
        record = {"event": name, "time": round(time.time(), 3), **fields}
        try:
            _append(self.jsonl_path, (json.dumps(record, default=str) + "\n").encode())
        except OSError as exc:
            # a full disk must not stop training: the events are dropped, said once
            if not self._jsonl_failing:
                logger.warning(
                    "%s: could not append (%s); events are dropped until it can",
                    self.jsonl_path, exc.strerror or exc,
                )  # fmt: skip
            self._jsonl_failing = True
            return
        if self._jsonl_failing:
            logger.info("%s: appending events again", self.jsonl_path)
            self._jsonl_failing = False

    def record_step(self, s: StepStats) -> None:
        self.step.set(s.step)
        for part in ("loss", "ce", "reward", "penalty"):
            self.loss.labels("total" if part == "loss" else part).set(getattr(s, part))
        if s.explore is not None and s.bonus is not None:
            self.loss.labels("explore").set(s.explore)
            self.bonus.set(s.bonus)
        self.feedback.set(s.feedback)
        self.accuracy.set(s.accuracy)
        self.throughput.set(s.tokens_per_s)
        self.lr.set(s.lr)
        self.grad_norm.set(s.grad_norm)
        self.lag.set(s.lag)
        self.staleness.set(s.staleness)
        self.version.set(s.version)
        if s.mismatch_kl is not None and s.ratio_outside is not None:
            self.mismatch_kl.labels("all").set(s.mismatch_kl)
            for behind, kl in s.mismatch_kl_by_behind.items():
                self.mismatch_kl.labels(behind).set(kl)
            self.ratio_outside.set(s.ratio_outside)
        self.masked.inc(s.masked)
        self.samples.inc(s.samples)
        self.tokens.inc(s.tokens)
        self.step_seconds.observe(s.seconds)
        self.event("step", **asdict(s))
        logger.info(step_line(s))

    def record_skip(self, reason: str, stream_id: str, detail: str) -> None:
        self.skipped.labels(reason).inc()
        self.event("skip", reason=reason, id=stream_id, detail=detail)
        # skipping by group policy is routine, many per step: the step line counts them
        level = logging.DEBUG if reason == "no_contrast" else logging.INFO
        logger.log(level, "skipped sample %s (%s): %s", stream_id, reason, detail)

    def record_checkpoint(
        self, step: int, version: int, path: Path, seconds: float, n: int
    ) -> None:
        self.checkpoint_seconds.observe(seconds)
        self.checkpoint_failing.set(0)
        self.uncommitted_steps.set(0)
        self.event(
            "checkpoint", step=step, version=version, path=str(path), seconds=seconds, committed=n
        )
        logger.info(
            "checkpoint step %d -> %s (v%d) in %.1fs, %d samples committed",
            step,
            path,
            version,
            seconds,
            n,
        )

    def record_checkpoint_failure(self, step: int, version: int, error: str) -> None:
        """The metrics and JSON line of a failed write; `trainer.ckpt_failures` logs."""
        self.checkpoint_failures.inc()
        self.checkpoint_failing.set(1)
        self.event("checkpoint_failed", step=step, version=version, error=error)

    def record_swap(
        self, version: int, outcome: str, seconds: float, detail: str,
        stopped_s: float | None = None,
    ) -> Spread | None:  # fmt: skip
        """A swap's outcome; a successful one with how long it stopped generation. Returns the
        spread of the run's pauses so far (None before the first)."""
        self.swaps.labels(outcome).inc()
        if outcome == "ok":
            self.swap_seconds.observe(seconds)
            self.version.set(version)
        if stopped_s is not None:
            self.generation_stopped.observe(stopped_s)
            self.pauses.append(stopped_s)
        spread = Spread.of(self.pauses)
        # the spread so far goes in the line too, for whoever reads only the last one
        extra = {} if stopped_s is None or spread is None else {
            "stopped_s": stopped_s, "stopped": spread.model_dump()
        }  # fmt: skip
        self.event(
            "swap", version=version, outcome=outcome, seconds=seconds, detail=detail, **extra
        )
        return spread


def _append(path: Path, data: bytes) -> None:
    """Append `data` whole or not at all: a write cut short by a full disk is taken back, so
    that readers never meet half a line."""
    with path.open("ab", buffering=0) as out:
        end = out.seek(0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[out.write(view) :]
        except OSError:
            out.truncate(end)
            raise


# The JSON line's field -> its TensorBoard tag, slash-grouped so that TensorBoard puts each group
# in a section of its own.
STEP_TAGS = {
    "loss": "loss/total",
    "ce": "loss/ce",
    "reward": "loss/reward",
    "penalty": "loss/penalty",
    "explore": "loss/explore",
    "bonus": "train/exploration_bonus",
    "feedback": "train/feedback",
    "accuracy": "train/accuracy",
    "samples": "train/samples",
    "skipped": "train/skipped",
    "tokens_per_s": "perf/tokens_per_s",
    "seconds": "perf/step_seconds",
    "lr": "optim/lr",
    "grad_norm": "optim/grad_norm",
    "lag": "queue/lag",
    "staleness": "queue/staleness",
    "version": "weights/version",
    "mismatch_kl": "offpolicy/mismatch_kl",
    "ratio_outside": "offpolicy/ratio_outside",
    "masked": "offpolicy/masked",
}


class TensorBoardSink:
    """TensorBoard event files from the trainer's JSON lines (`TrainerMetrics.event`): every step
    field under its `STEP_TAGS` tag, swap and checkpoint times; `scalars` adds others' numbers
    (the demo's held-out accuracy) to the same run."""

    def __init__(self, log_dir: Path) -> None:
        # tensorboardX writes the event format without TensorFlow or TensorBoard installed
        from tensorboardX import SummaryWriter

        self.log_dir = log_dir
        self._writer = SummaryWriter(str(log_dir), flush_secs=10)
        self._step = 0

    def record(self, event: dict[str, Any]) -> None:
        """One parsed JSON line; events that carry no numbers worth plotting are ignored."""
        wall = event.get("time")
        if event.get("event") == "step":
            self._step = int(event["step"])
            values = {
                tag: float(event[key])
                for key, tag in STEP_TAGS.items()
                if event.get(key) is not None
            }
            for behind, kl in event.get("mismatch_kl_by_behind", {}).items():
                values[f"offpolicy/mismatch_kl_behind_{behind}"] = float(kl)
            self.scalars(self._step, values, wall)
        elif event.get("event") == "swap" and event.get("outcome") == "ok":
            self.scalars(self._step, {"weights/swap_seconds": float(event["seconds"])}, wall)
        elif event.get("event") == "checkpoint":
            self.scalars(self._step, {"perf/checkpoint_seconds": float(event["seconds"])}, wall)

    def scalars(self, step: int, values: dict[str, float], wall: float | None = None) -> None:
        for tag, value in values.items():
            self._writer.add_scalar(tag, value, step, walltime=wall)

    @property
    def step(self) -> int:
        """The last trainer step recorded (x of scalars that come from outside the trainer)."""
        return self._step

    def close(self) -> None:
        self._writer.close()
