"""Checkpoints the disk will not take, as episodes: from the first failed write to the next
checkpoint written.

Meanwhile the samples of every step taken since the last checkpoint stay unacknowledged in
Redis (pending: a crash gets them back, nothing is lost), and the trainer keeps training for up
to `checkpoint_retry_steps` more steps, trying the checkpoint again after each one, since a
disk that filled for a moment should not stop it. Then it holds: it reads no new samples (the
unacknowledged ones stop growing: at most `(checkpoint_every + checkpoint_retry_steps) *
batch_size`) and retries with backoff, up to `checkpoint_max_backoff_s` apart, until a write
works; the loop then goes on by itself. An episode says so once (a warning when it starts, a
line when the trainer holds, a line when it ends), not once per try; the metrics
(`gvloop_trainer_checkpoint_failing`, `..._failures_total`, `..._uncommitted_steps`) follow it
all along.
"""

from __future__ import annotations

import logging
import time

from services.clients import RetryPolicy
from trainer.ckpt import CheckpointWriteError
from trainer.metrics import TrainerMetrics

logger = logging.getLogger("trainer")


def steps_text(first: int, last: int) -> str:
    """`step 7`, or `steps 7-9`."""
    return f"step {first}" if first >= last else f"steps {first}-{last}"


class CheckpointFailures:
    def __init__(self, metrics: TrainerMetrics, retry_steps: int, backoff: RetryPolicy) -> None:
        self.metrics = metrics
        self.retry_steps = retry_steps
        self.backoff = backoff
        self.since: float | None = None
        """When the episode's first write failed (monotonic); None: checkpoints are written."""
        self.attempts = 0
        """Failed writes in this episode."""
        self.hold_at = 0
        """The step at which the trainer stops reading new samples."""
        self.retry_at = 0.0
        """While holding: when to try again (monotonic)."""
        self._held = 0  # failed writes while holding: the backoff's attempt number

    @property
    def failing(self) -> bool:
        return self.since is not None

    def holding(self, step: int) -> bool:
        """Whether, at `step`, the trainer must read nothing and only retry the checkpoint."""
        return self.failing and step >= self.hold_at

    def failed(
        self, exc: CheckpointWriteError, version: int, first_step: int, last_step: int,
        last: bool = False,
    ) -> None:  # fmt: skip
        """A try to checkpoint steps `first_step..last_step` as `version` failed; `last`: the
        trainer stops after it."""
        self.attempts += 1
        self.metrics.record_checkpoint_failure(last_step, version, exc.strerror or str(exc))
        steps = steps_text(first_step, last_step)
        if last:
            logger.error(
                "stopping: checkpoint v%d could not be written: %s (%s): %s not committed, "
                "their samples stay pending and are trained again after a restart",
                version, exc.strerror, exc.filename, steps,
            )  # fmt: skip
            return
        if self.since is None:
            self.since = time.monotonic()
            self.hold_at = last_step + self.retry_steps
            then = f"with backoff (at most {self.backoff.max_backoff_s:g}s apart)"
            retry = (
                f"retrying each step until step {self.hold_at}, then reading no new samples "
                f"and retrying {then}"
                if self.retry_steps
                else f"reading no new samples and retrying {then}"
            )
            logger.warning(
                "checkpoint v%d could not be written: %s (%s): keeping the samples of %s "
                "unacknowledged; %s",
                version, exc.strerror, exc.filename, steps, retry,
            )  # fmt: skip
        else:
            logger.debug("checkpoint v%d of %s: still failing (%s)", version, steps, exc.strerror)
        if self.holding(last_step):
            if self._held == 0:
                logger.info(
                    "holding at step %d: %s not committed, no new samples read until "
                    "checkpoint v%d is written",
                    last_step, steps, version,
                )  # fmt: skip
            self._held += 1
            self.retry_at = time.monotonic() + self.backoff.delay(self._held)

    def written(self, version: int, first_step: int, last_step: int) -> None:
        """A checkpoint of steps `first_step..last_step` is on disk: the episode, if any, ends."""
        if self.since is None:
            return
        logger.info(
            "checkpoint v%d written after %d failed attempts over %.1fs: %s committed, "
            "training goes on",
            version, self.attempts, time.monotonic() - self.since,
            steps_text(first_step, last_step),
        )  # fmt: skip
        self.since, self.attempts, self._held = None, 0, 0
