"""The trainer worker: batches from the Redis stream, feedback-augmented AdamW steps, checkpoints
that commit (and then acknowledge) the samples they trained on, and hot swaps of agent A.

Lifecycle: `setup()` (resume from the newest checkpoint, or start from GVLOOP_MODEL), then
`main_loop()` until max_steps or SIGTERM/SIGINT, then `stop()`, which commits the steps taken
since the last checkpoint so a clean stop redoes nothing. A checkpoint the disk will not take
leaves its samples unacknowledged and is tried again, first at each step, then holding
(`trainer.ckpt_failures`).

Under torchrun the Worker is rank 0 and the other ranks `follow` its orders (trainer.distributed
says why): the loop below is the same, each collective an order they all carry out.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import transformers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from services.clients import GeneratorClient, RetryPolicy
from services.model_files import resolve_model
from services.queue import open_queue
from services.redis_checks import check_redis
from services.redis_server import EmbeddedRedis, connect, ensure_redis
from services.settings import CommonSettings
from trainer import ckpt
from trainer.answer_counts import AnswerCounts
from trainer.batch import sequence_length, shard_batch
from trainer.ckpt_failures import CheckpointFailures
from trainer.distributed import (
    Order,
    Rank,
    broadcast,
    close,
    full_state_dicts,
    setup_rank,
    wrap_model,
)
from trainer.exploration import Outcome, compute_bonuses, outcomes
from trainer.intake import Intake
from trainer.metrics import StepStats, TrainerMetrics
from trainer.progress import TrainProgress
from trainer.settings import TrainerSettings
from trainer.step import StepResult, get_lr, setup_device, train_step
from trainer.swap import SwapPublisher

logger = logging.getLogger("trainer")


class StopRequested(Exception):
    """A stop request came before the step could start."""


def setup_model(
    source: str, device: torch.device
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """float32 weights (the optimizer's master copy; autocast does bf16 compute)."""
    logger.info("loading model from %s onto %s", source, device)
    # transformers draws a progress bar per load and per save: noise between the step lines
    transformers.utils.logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).to(device)
    return model, AutoTokenizer.from_pretrained(source)


class Replica:
    """One rank's model and optimizer, and the work every rank does on rank 0's orders."""

    def __init__(
        self, source: str, resume: Path | None, cfg: TrainerSettings, rank: Rank,
        amp_dtype: torch.dtype | None,
    ) -> None:  # fmt: skip
        self.cfg, self.rank, self.amp_dtype = cfg, rank, amp_dtype
        self.model, self.tokenizer = setup_model(source, rank.device)
        self.trained = wrap_model(self.model, rank)  # what forward and the optimizer see
        self.optimizer = setup_optimizer(self.trained, cfg)
        if resume is not None:
            ckpt.load_optimizer_state(resume, self.trained, self.optimizer)
        self.pad_id = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id or 0

    def step(self, order: Order, should_stop: Callable[[], bool]) -> StepResult | None:
        cfg = self.cfg
        shard = shard_batch(
            order.samples, self.rank.rank, self.rank.world, cfg.micro_batch_size,
            cfg.max_seq_len, self.pad_id, order.version, order.bonuses,
        )  # fmt: skip
        # a rank alone may abandon a step; ranks together must all finish it
        stop = should_stop if self.rank.world == 1 else lambda: False
        return train_step(
            self.trained, self.optimizer, shard, order.lr, cfg, self.rank.device,
            self.amp_dtype, stop,
        )  # fmt: skip

    def state_dicts(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return full_state_dicts(self.trained, self.optimizer)


def follow(replica: Replica) -> None:
    """A rank other than 0: carry out its orders until it says stop."""
    while True:
        order = broadcast(Order("idle"))  # what is passed here is only a placeholder
        if order.kind == "step":
            replica.step(order, lambda: False)
        elif order.kind == "commit":
            replica.state_dicts()  # rank 0 gathers and writes them
        elif order.kind == "stop":
            return


def setup_optimizer(model: torch.nn.Module, cfg: TrainerSettings) -> torch.optim.AdamW:
    logger.info("AdamW (lr %.1e, %s, weight decay %g)", cfg.lr, cfg.schedule, cfg.weight_decay)
    return torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
    )


def setup_publisher(cfg: TrainerSettings, metrics: TrainerMetrics, served: int) -> SwapPublisher:
    # one attempt per request: the publisher owns the retries (and their backoff)
    client = GeneratorClient(
        cfg.generator_url, cfg.generator_token, cfg.swap_timeout_s, RetryPolicy(attempts=1)
    )
    backoff = RetryPolicy(backoff_s=1.0, max_backoff_s=cfg.swap_max_backoff_s)
    return SwapPublisher(client, metrics, served, backoff)


class Worker:
    """The trainer, or rank 0 of a torchrun job."""

    def __init__(
        self, cfg: TrainerSettings, common: CommonSettings, rank: Rank | None = None,
        amp_dtype: torch.dtype | None = None,
    ) -> None:  # fmt: skip
        self.cfg = cfg
        self.common = common
        self.root = common.checkpoint_root.resolve()
        self.metrics = TrainerMetrics(
            cfg.metrics_file or common.data_dir / "trainer" / "metrics.jsonl"
        )
        self.failures = CheckpointFailures(
            self.metrics,
            cfg.checkpoint_retry_steps,
            RetryPolicy(backoff_s=1.0, max_backoff_s=cfg.checkpoint_max_backoff_s),
        )
        self.stopping = asyncio.Event()
        if rank is None:
            device, amp_dtype = setup_device(cfg)
            rank = setup_rank(cfg, device)
        self.rank, self.amp_dtype = rank, amp_dtype
        # set by setup()
        self.state: ckpt.TrainerState  # of the last checkpoint (or the start)
        self.step = 0
        self.replica: Replica
        self.intake: Intake
        self.publisher: SwapPublisher | None = None
        self.redis: EmbeddedRedis | None = None
        self.counts: AnswerCounts | None = None  # exploration "count" only

    async def setup(self) -> None:
        cfg, common = self.cfg, self.common
        if cfg.metrics_port:
            self.metrics.serve(cfg.metrics_host, cfg.metrics_port)
        self.root.mkdir(parents=True, exist_ok=True)
        ckpt.remove_partial(self.root)
        resume = ckpt.latest_checkpoint(self.root)
        if resume is None:
            source = resolve_model(common.model, common.data_dir)
            self.state = ckpt.TrainerState(step=0, version=0, served_version=0, committed_ids=[])
        else:
            source = str(resume)
            self.state = ckpt.read_state(resume)
        self.step = self.state.step
        broadcast((source, resume))  # the other ranks start from the same weights
        self.replica = Replica(source, resume, cfg, self.rank, self.amp_dtype)
        if resume is not None:
            logger.info(
                "resumed from %s: step %d, v%d, %d committed samples to acknowledge",
                resume, self.step, self.state.version, len(self.state.committed_ids),
            )  # fmt: skip
        self.metrics.event("start", step=self.step, version=self.state.version, source=source)

        redis_url, self.redis = ensure_redis(common.redis_url, common.data_dir)
        queue = open_queue(common, redis_url, cfg.consumer)
        self.intake = Intake(
            queue,
            self.metrics,
            batch_size=cfg.batch_size,
            max_wait_s=cfg.max_wait_s,
            max_staleness=cfg.max_staleness,
            skip_groups=cfg.skip_groups,
            max_seq_len=cfg.max_seq_len,
            vocab_size=self.replica.model.get_input_embeddings().num_embeddings,
        )
        # a Redis that does not answer yet is waited for; one that evicts stops the trainer.
        # partial, not lambda: tenacity awaits only what it sees is a coroutine function
        await self.intake.until_done(
            "check redis", functools.partial(check_redis, redis_url, common.redis_timeout_s)
        )
        await self.intake.until_done("create group", queue.ensure_group)
        self.intake.resume(self.state.committed_ids)
        if cfg.exploration == "count":
            self.counts = AnswerCounts(
                connect(redis_url, timeout_s=common.redis_timeout_s), common.stream,
                self.metrics, max_answers=cfg.exploration_max_answers,
                max_problems=cfg.exploration_max_problems,
            )  # fmt: skip
            await self.intake.until_done(
                "answer counts",
                functools.partial(self.counts.resume, self.state.version, self.state.answer_counts),
            )
            await self.counts.apply_committed()
        await self.intake.ack_committed()
        if cfg.swap:
            self.publisher = setup_publisher(cfg, self.metrics, self.state.served_version)
            self.publisher.start()
            if resume is not None:
                # agent A may have restarted on the base model, or died before this swap
                self.publisher.publish(resume, self.state.version)
        logger.info(
            "trainer %s reading %s (group %s) from %s: batch %d (micro %d), checkpoint every "
            "%d steps into %s",
            cfg.consumer, common.stream, common.group, redis_url, cfg.batch_size,
            cfg.micro_batch_size, cfg.checkpoint_every, self.root,
        )  # fmt: skip

    @property
    def served_version(self) -> int:
        return self.publisher.served_version if self.publisher else self.state.served_version

    def done(self) -> bool:
        return self.stopping.is_set() or 0 < self.cfg.max_steps <= self.step

    async def main_loop(self) -> None:
        cfg = self.cfg
        # the other ranks wait for orders meanwhile, within the collective timeout
        idle_s = cfg.collective_timeout_s / 4 if self.rank.world > 1 else None
        show = cfg.progress == "on" or (cfg.progress == "auto" and sys.stdout.isatty())
        with TrainProgress(show, cfg.max_steps, self.step) as progress:
            while not self.done():
                # left over if Redis was down at the commit
                if self.counts is not None:
                    await self.counts.apply_committed()
                await self.intake.ack_committed()
                if self.failures.holding(self.step):
                    await self.hold(idle_s)
                    continue
                deliveries = await self.intake.next_batch(
                    lambda: self.served_version, self.stopping, idle_s
                )
                if not deliveries:
                    await asyncio.to_thread(broadcast, Order("idle"))
                    continue
                t0 = time.perf_counter()
                # by length, so that each micro-batch pads only to its own longest sequence
                samples = sorted((d.sample for d in deliveries), key=sequence_length)
                keys = outcomes(samples)
                try:
                    bonuses = await self.bonuses(keys)
                except StopRequested:  # while Redis would not give the answer counts
                    logger.info(
                        "stopping: step %d not taken, its samples stay pending", self.step + 1
                    )
                    break
                lr = get_lr(self.step + 1, cfg)
                order = await asyncio.to_thread(
                    broadcast, Order("step", lr, samples, self.state.version, bonuses)
                )
                out = await asyncio.to_thread(self.replica.step, order, self.stopping.is_set)
                if out is None:
                    logger.info(
                        "stopping: step %d abandoned, its samples stay pending", self.step + 1
                    )
                    break
                seconds = time.perf_counter() - t0
                self.step += 1
                self.intake.record_trained([d.id for d in deliveries])
                if self.counts is not None:
                    self.counts.record_trained(keys)
                self.state.samples_trained += len(deliveries)
                self.state.tokens_trained += out.tokens
                oldest = min(d.sample.weight_version for d in deliveries)
                stats = StepStats(
                    step=self.step, seconds=seconds, loss=out.loss, ce=out.ce,
                    reward=out.reward, penalty=out.penalty, feedback=out.feedback,
                    accuracy=out.accuracy, samples=len(deliveries),
                    skipped=self.intake.batch_skipped, tokens=out.tokens,
                    tokens_per_s=out.tokens / seconds, lr=order.lr, grad_norm=out.grad_norm,
                    lag=await self.intake.lag(), staleness=max(0, self.served_version - oldest),
                    version=self.served_version, mismatch_kl=out.mismatch.kl,
                    ratio_outside=out.mismatch.outside, masked=out.mismatch.masked,
                    mismatch_kl_by_behind=out.mismatch.kl_by_behind, explore=out.explore,
                    bonus=out.bonus,
                )  # fmt: skip
                self.metrics.record_step(stats)
                self.metrics.uncommitted_steps.set(self.step - self.state.step)
                progress.update(stats)
                # while checkpoints fail, each step tries again
                if self.step % cfg.checkpoint_every == 0 or self.failures.failing:
                    await self.commit()

    async def bonuses(self, keys: list[Outcome | None]) -> list[float] | None:
        """Each sample's exploration bonus (None: exploration off), from its outcome; with
        counts, N(x, a) as trained so far, read again while Redis fails until a stop request
        (StopRequested)."""
        cfg = self.cfg
        if cfg.exploration == "none":
            return None
        seen = None
        if self.counts is not None:
            known = [k for k in keys if k is not None]
            found = await self.counts.seen(known, self.stopping)
            if found is None:
                raise StopRequested
            by_key = dict(zip(known, found, strict=True))
            seen = [0 if k is None else by_key[k] for k in keys]
        return compute_bonuses(
            keys, cfg.exploration, cfg.exploration_baseline, cfg.exploration_b0, seen
        )

    async def hold(self, idle_s: float | None) -> None:
        """Checkpoints failing and as many steps uncommitted as allowed: read nothing, retry
        the checkpoint once its backoff is over (a stop request cuts the wait short). The other
        ranks get an order at least every `idle_s`."""
        wait = max(0.0, self.failures.retry_at - time.monotonic())
        if idle_s is not None:
            wait = min(wait, idle_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), wait)
        if self.stopping.is_set():
            return
        if time.monotonic() >= self.failures.retry_at:
            await self.commit()
        else:
            await asyncio.to_thread(broadcast, Order("idle"))

    async def commit(self, last: bool = False) -> None:
        """Checkpoint the steps taken since the last one, acknowledge their samples, publish.
        If the disk will not take the checkpoint nothing is acknowledged, and the next call
        tries again with every step since the last checkpoint; `last`: there is no next call
        (the trainer stops), their samples stay pending for a restart to train again."""
        t0 = time.perf_counter()
        first = self.state.step + 1
        state = self.state.model_copy(
            update={
                "step": self.step,
                "version": self.state.version + 1,
                "served_version": self.served_version,
                "committed_ids": self.intake.commit_ids(),
                "answer_counts": (
                    self.counts.commit_batches(self.state.version + 1) if self.counts else []
                ),
                "samples_skipped": self.state.samples_skipped + self.intake.skipped,
            }
        )
        await asyncio.to_thread(broadcast, Order("commit"))
        model_state, optimizer_state = await asyncio.to_thread(self.replica.state_dicts)
        try:
            path = await asyncio.to_thread(
                ckpt.save_checkpoint, self.root, self.replica.model, self.replica.tokenizer,
                model_state, optimizer_state, state,
            )  # fmt: skip
        except ckpt.CheckpointWriteError as exc:
            self.failures.failed(exc, state.version, first, self.step, last)
            return
        self.failures.written(state.version, first, state.step)
        self.state, self.intake.skipped = state, 0
        self.intake.mark_committed()
        if self.counts is not None:
            self.counts.mark_committed(state.answer_counts)
        self.metrics.record_checkpoint(
            state.step, state.version, path, time.perf_counter() - t0, len(state.committed_ids)
        )
        if self.counts is not None:
            await self.counts.apply_committed()
        await self.intake.ack_committed()
        protect = (
            {self.publisher.in_flight} if self.publisher and self.publisher.in_flight else set()
        )
        await asyncio.to_thread(
            ckpt.prune_checkpoints, self.root, self.cfg.keep_checkpoints, protect
        )
        if self.publisher is not None:
            self.publisher.publish(path, state.version)

    async def stop(self, collectives: bool = True) -> None:
        """Commit what is left and release everything; without `collectives` (one failed: the
        other ranks are gone or stuck) the steps since the last checkpoint are left to redo."""
        if collectives and self.step > self.state.step:
            logger.info("stopping: committing steps %d..%d", self.state.step + 1, self.step)
            await self.commit(last=True)
        if self.publisher is not None:
            # a finished run hands agent A its final weights; a stop request does not wait
            finished = 0 < self.cfg.max_steps <= self.step
            await self.publisher.stop(self.cfg.swap_timeout_s if finished else 0.0)
        await self.intake.queue.aclose()
        if self.counts is not None:
            await self.counts.aclose()
        if self.redis is not None:
            self.redis.stop()
        if collectives:
            await asyncio.to_thread(broadcast, Order("stop"))
        logger.info("trainer stopped at step %d (v%d)", self.step, self.state.version)


async def run(cfg: TrainerSettings, common: CommonSettings) -> None:
    """The worker until max_steps, SIGTERM or SIGINT (each ends it cleanly); under torchrun,
    rank 0 runs it and the other ranks follow."""
    device, amp_dtype = setup_device(cfg)
    rank = setup_rank(cfg, device)
    try:
        if rank.leader:
            await lead(Worker(cfg, common, rank, amp_dtype))
        else:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, _wait_for_rank_0)
            source, resume = broadcast((common.model, None))
            follow(Replica(source, resume, cfg, rank, amp_dtype))
    except (dist.DistError, RuntimeError) as exc:
        if rank.world == 1:
            raise
        logger.error(
            "rank %d: a collective failed or timed out (collective_timeout_s %g): another rank "
            "died or hangs; torchrun restarts the job if --max-restarts allows: %s",
            rank.rank, cfg.collective_timeout_s, exc,
        )  # fmt: skip
        raise
    finally:
        close()


async def lead(worker: Worker) -> None:
    # Until set up, a signal stops the process at once (nothing to commit yet; a Redis that
    # cannot be reached would otherwise hold it in setup's retries)
    await worker.setup()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _stop_on_signal, worker, sig)
    failed = True
    try:
        await worker.main_loop()
        failed = False
    finally:
        await worker.stop(collectives=not failed or worker.rank.world == 1)


def _wait_for_rank_0(signum: int, frame: object) -> None:
    # torchrun signals every rank; rank 0 stops them all, after its last commit
    logger.info("%s: stopping when rank 0 does", signal.Signals(signum).name)


def _stop_on_signal(worker: Worker, sig: signal.Signals) -> None:
    logger.info("%s: stopping after the current micro-batch", sig.name)
    worker.stopping.set()
