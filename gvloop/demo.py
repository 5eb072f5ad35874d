"""The demo, and a run on a user's own task: feed training problems to the running pipeline,
and measure agent A on held-out problems before training and after every hot swap.

Three parts: the feeders (`gvloop/feeding.py`) post training problems; the held-out set
(`gvloop/heldout.py`) is answered greedily by each served version (pass@1, with a binomial
standard error) and sampled n times per problem at the training sampling (pass@k and distinct
answers, with standard errors over problems), graded as the loop's samples are; the `Demo`
here runs them together, watches the served version, and tells the run state (what the
console shows) what happens. The training stream's diversity costs no extra generation: it is
measured on the training samples each version generates, as the mean fraction of distinct
final answers among the n samples of a problem (a loop collapsing onto one answer per problem
drives it towards 1/n), with the shares of problems all of whose samples were wrong, and
right. Opt-in (`gap_threshold`), the generation-verification gap of the held-out samples:
agent B's judge scores each without its reference answer, at a judge call per sample. The
curve is saved as `curve.json` and `curve.png` in the run directory after every point
(docs/make-run.md, "What the curve measures").
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, model_validator

from gvloop.curve import EvalPoint, heldout_summary, load_curve, plot_curve
from gvloop.feeding import FeedConfig, Feeder, FeedProgress
from gvloop.heldout import HeldOut
from gvloop.problems import PROBLEM_SETS, TaskKeys, load_problems, overlap
from gvloop.runstate import RunState
from services.clients import GeneratorClient, RetryPolicy, VerifierClient
from services.queue import SampleQueue
from services.schemas import ProblemIn, WeightInfo
from trainer import ckpt

logger = logging.getLogger(__name__)

# a resumed trainer publishes its checkpoint as soon as it has loaded it
RESUMED_SWAP_TIMEOUT_S = 900.0

# Held-out problems sampled for pass@k by default (the first ones). On the 2-core machine with
# the default model and the engine serving nothing else, one version's 100 greedy answers took
# 20 s, 4 samples of 25, 50 or 100 problems another 23, 45 or 84 s: 50 keeps pass@4's
# standard error within about 7 points for about twice the greedy evaluation's decoding.
PASSK_PROBLEMS = 50


# The trainer recipe the learning benchmark chose (bench/bench_learning.py; README, "The
# demo's task and recipe"): the seed's loss with the reward term weighted up, lambda1 = 10, so
# a right sample's likelihood term weighs 11 against a wrong one's 1; a step twice the
# default; and no training on problems none of whose samples was right, whose only gradient
# is imitating wrong answers. A variable set in the environment (or .env) wins.
DEMO_RECIPE = {
    "GVLOOP_TRAINER_LAMBDA1": "10",
    "GVLOOP_TRAINER_LR": "2e-5",
    "GVLOOP_TRAINER_SKIP_GROUPS": "all_wrong",
}


class DemoConfig(FeedConfig):
    train_file: Path | str = PROBLEM_SETS["addition"].train
    heldout_file: Path | str = PROBLEM_SETS["addition"].heldout
    keys: TaskKeys = TaskKeys()
    heldout_size: int = Field(default=100, ge=1)
    eval_max_tokens: int = 48
    """Of each greedy held-out answer (the samples take `sampling`'s, the training ones')."""
    passk_n: int = Field(default=4, ge=0)
    """Held-out samples per problem for pass@k and distinct answers, drawn with the training
    samples' `sampling` in one request per problem; 0: no sampled evaluation (pass@1 only)."""
    passk_k: int = Field(default=4, ge=1)
    """The k of pass@k, at most `passk_n`."""
    passk_problems: int | None = Field(default=PASSK_PROBLEMS, ge=1)
    """Held-out problems sampled, the first ones (None: every one of `heldout_size`)."""
    gap_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    """Measure the generation-verification gap of the held-out samples: agent B's judge scores
    each without its reference answer, and those with p(correct) at least this are kept
    (gvloop/gap.py). None: not measured. It costs a judge call per sample: on a CPU about as
    much as generating it."""
    live_eval: bool = True
    """Evaluate each version on the engine as it comes; False: only record when each began to
    be served, and its checkpoint (the learning benchmark evaluates those afterwards, off the
    clock, as it does the naive loop's)."""
    swaps: int | None = Field(default=None, ge=0, description="Stop after this many hot swaps.")
    time_budget_s: float = Field(
        default=900.0, gt=0, description="Seconds of training: feeding stops after this."
    )

    @model_validator(mode="after")
    def _passk_n_at_least_k(self) -> DemoConfig:
        if self.passk_n and self.passk_n < self.passk_k:
            raise ValueError(
                f"passk_n ({self.passk_n}) must be at least passk_k ({self.passk_k}): pass@k "
                "needs k samples per problem (or passk_n 0: no sampled evaluation)"
            )
        if self.gap_threshold is not None and not self.passk_n:
            raise ValueError(
                "gap_threshold needs held-out samples to judge: passk_n must be at least 1"
            )
        return self

    def load_task(self) -> tuple[list[ProblemIn], list[ProblemIn]]:
        """The training and held-out problems (ProblemFileError names a bad file's row and
        field); held-out problems that are also training problems are warned about."""
        train = load_problems(self.train_file, keys=self.keys)
        heldout = load_problems(self.heldout_file, keys=self.keys, limit=self.heldout_size)
        if shared := overlap(train, heldout):
            logger.warning(
                "%d of %d held-out problems (%s) are also training problems (%s): their "
                "accuracy measures memory, not learning",
                shared,
                len(heldout),
                self.heldout_file,
                self.train_file,
            )
        return train, heldout


@dataclass(frozen=True)
class Served:
    """When a version began to be served: seconds of training, samples fed by then."""

    at_s: float
    samples_fed: int
    checkpoint_dir: str | None


class Demo:
    def __init__(
        self,
        config: DemoConfig,
        generator_url: str,
        engine_url: str,
        verifier_url: str,
        out_dir: Path,
        generator_token: str | None = None,
        verifier_token: str | None = None,
        queue: SampleQueue | None = None,
        state: RunState | None = None,
        checkpoint_root: Path | None = None,
        trainer_finished: Callable[[], bool] | None = None,
        resume: bool = False,
    ) -> None:
        """`queue`: the sample queue, whose room the feeders wait for rather than be refused;
        `state`: what the console shows, told of every sample fed and every point (one of its
        own when not given);
        `checkpoint_root`: the trainer's checkpoints (the version a resumed run starts from,
        the last one of a run that feeds `epochs`); `trainer_finished`: whether the trainer
        has stopped at its last step (GVLOOP_TRAINER_MAX_STEPS); `resume`: go on from the
        curve and the feeding progress saved in `out_dir`."""
        self.config = config
        self.out_dir = out_dir
        self.generator = GeneratorClient(generator_url, generator_token, timeout_s=900)
        self.queue = queue
        self.state = state or RunState(out_dir, budget_s=config.time_budget_s)
        self.checkpoint_root = checkpoint_root
        self.trainer_finished = trainer_finished
        self.resume = resume
        self.verifier = VerifierClient(verifier_url, verifier_token, timeout_s=300)
        train, heldout = config.load_task()
        self.heldout = HeldOut(
            heldout,
            engine_url,
            self.verifier,
            out_dir,
            config.system_prompt,
            config.eval_max_tokens,
            sampling=config.sampling,
            passk_n=config.passk_n,
            passk_k=config.passk_k,
            passk_problems=config.passk_problems,
            gap_threshold=config.gap_threshold,
        )
        progress_file = out_dir / "progress.json"
        # The feeders' own client does not retry: a full queue is a state they wait out, not
        # an error to retry (and log) every few seconds.
        self.feeder = Feeder(
            config,
            train,
            GeneratorClient(
                generator_url, generator_token, timeout_s=900, policy=RetryPolicy(attempts=1)
            ),
            self.state,
            queue,
            FeedProgress.load(progress_file) if resume else None,
            progress_file,
        )
        self.trained_before_s = self.feeder.progress.training_s
        self.training_started: float | None = None
        self.earlier_points = 0
        """Points of the curve a resumed run starts from: final, never changed."""

    async def run(self) -> list[EvalPoint]:
        """Evaluate, then train until the time budget, `swaps` hot swaps, the trainer's last
        step or the last epoch, evaluating each newly served version while the feeders and the
        trainer go on; returns the curve (a resumed run's: the earlier points too)."""
        model = await self.heldout.served_model()
        curve = load_curve(self.out_dir / "curve.json") if self.resume else []
        self.earlier_points = len(curve)
        first = await self._first_version()
        if not curve or curve[-1].version != first.version:
            served = Served(self._training_s(), self.feeder.progress.samples, first.checkpoint_dir)
            curve.append(await self.point(model, first.version, served, curve))
        measured_before = len(curve)
        self.training_started = time.monotonic()
        self.state.training_started = self.training_started
        self.state.phase = "training"
        stop = asyncio.Event()
        feeding = asyncio.create_task(self.feeder.run(stop, self._training_s))
        # A version's point is stamped when it began to be served, not when its evaluation
        # ends: the evaluation is the benchmark's cost, not the pipeline's (the naive loop's
        # clock stops while it evaluates). So the served version is watched throughout.
        served_at: dict[int, Served] = {}
        watcher = asyncio.create_task(self._watch_served(served_at, stop))
        try:
            while not await self._finished(curve, len(curve) - measured_before, feeding):
                await asyncio.sleep(1.0)
                for task in (feeding, watcher):
                    if task.done():
                        task.result()  # a feeder that failed fails the run, not silently
                latest = max(served_at, default=curve[-1].version)
                if latest != curve[-1].version:
                    curve.append(await self.point(model, latest, served_at[latest], curve))
        finally:
            stop.set()
            watcher.cancel()
            self.state.training_ended = time.monotonic()
            self.state.phase = "training over: stopping"
            await asyncio.gather(feeding, return_exceptions=True)
        self._attach_sample_stats(curve)
        if self.config.live_eval:
            self.save(curve)
        return curve

    async def _first_version(self) -> WeightInfo:
        """The version to measure first: what agent A serves, or for a resumed run the newest
        checkpoint, which the resumed trainer publishes (agent A starts on the base model)."""
        newest = ckpt.latest_checkpoint(self.checkpoint_root) if self.checkpoint_root else None
        expected = ckpt.read_state(newest).version if self.resume and newest else None
        deadline = time.monotonic() + RESUMED_SWAP_TIMEOUT_S
        while True:
            weights = await self.generator.weights()
            if expected is None or weights.version == expected:
                return weights
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"agent A still serves v{weights.version}, not the resumed checkpoint "
                    f"{newest} (v{expected}), after {RESUMED_SWAP_TIMEOUT_S:.0f}s"
                )
            await asyncio.sleep(1.0)

    async def _watch_served(self, served: dict[int, Served], stop: asyncio.Event) -> None:
        while not stop.is_set():
            weights = await self.generator.weights()
            if weights.version not in served:
                served[weights.version] = Served(
                    self._training_s(), self.feeder.progress.samples, weights.checkpoint_dir
                )
            await asyncio.sleep(0.5)

    async def point(
        self, model: str, version: int, served: Served, curve: list[EvalPoint] | None = None
    ) -> EvalPoint:
        """The curve's point of `version`, placed where it began to be served; evaluated now
        unless the config says afterwards."""
        point = EvalPoint(
            version=version,
            at_s=served.at_s,
            samples_fed=served.samples_fed,
            problems=0,
            correct=0,
            checkpoint_dir=served.checkpoint_dir,
        )
        if not self.config.live_eval:
            logger.info("v%d served from %.0fs of training", version, served.at_s)
            return point
        return await self.evaluate(model, point, curve)

    async def evaluate(
        self, model: str, point: EvalPoint, curve: list[EvalPoint] | None = None
    ) -> EvalPoint:
        """`point` with the held-out accuracy (pass@1) of its version, and its pass@k and
        distinct answers from samples."""
        version = point.version
        problems = len(self.heldout.problems)
        self.state.phase = f"evaluating v{version} on {problems} held-out problems"
        correct = await self.heldout.correct(model, version)
        point = point.model_copy(update={"problems": problems, "correct": correct})
        if self.heldout.passk_n:
            sampled_problems = len(self.heldout.sampled_problems)
            judged = ", judged without reference" if self.heldout.gap_threshold is not None else ""
            self.state.phase = (
                f"sampling v{version}: {self.heldout.passk_n} answers to each of "
                f"{sampled_problems} held-out problems{judged}"
            )
        if sampled := await self.heldout.sample(model, version):
            point = point.model_copy(
                update={
                    "passk_n": sampled.n,
                    "passk_k": sampled.k,
                    "passk_problems": sampled.problems,
                    "pass_at_k": sampled.pass_at_k.value,
                    "pass_at_k_stderr": sampled.pass_at_k.stderr,
                    "heldout_distinct_fraction": sampled.distinct.value,
                    "heldout_distinct_stderr": sampled.distinct.stderr,
                    "gap_judge": sampled.gap_judge,
                    "gap_reference": sampled.gap_reference,
                }
            )
        logger.info(
            "held-out v%d, served from %.0fs of training: %s%s",
            version,
            point.at_s,
            heldout_summary(point),
            self._previous_version_note(curve),
        )
        if curve is not None:
            self._attach_sample_stats([*curve, point])
            self.save([*curve, point])
        self.state.held_out(point)
        if self.training_started is not None:
            self.state.phase = "training"
        return point

    def save(self, curve: list[EvalPoint]) -> None:
        """The curve as JSON and as a plot in the run directory, rewritten at every point so
        that a stopped run keeps what it measured."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        rows = [{**p.model_dump(), "accuracy": p.accuracy, "stderr": p.stderr} for p in curve]
        (self.out_dir / "curve.json").write_text(json.dumps(rows, indent=2))
        plot_curve(curve, self.out_dir / "curve.png")

    def _previous_version_note(self, curve: list[EvalPoint] | None) -> str:
        if not curve or not (stats := self.feeder.by_version.get(curve[-1].version)):
            return ""
        return (
            f"; v{curve[-1].version} sampled {stats.samples} training answers, "
            f"{100 * stats.correct / stats.samples:.0f}% correct, "
            f"{stats.distinct_sum / stats.problems:.2f} distinct per problem, "
            f"{100 * stats.all_wrong / stats.problems:.0f}% of problems all wrong, "
            f"{100 * stats.all_right / stats.problems:.0f}% all right"
        )

    def _attach_sample_stats(self, curve: list[EvalPoint]) -> None:
        """What each version of this run sampled, and how long its swap stopped generation (a
        resumed run's earlier points stay as they were)."""
        for i, point in enumerate(curve[self.earlier_points :], start=self.earlier_points):
            point.swap_stopped_s = self.state.pauses.get(point.version, point.swap_stopped_s)
            after = curve[i - 1].version if i else point.version
            since = [s for v, s in sorted(self.state.pauses.items()) if after < v <= point.version]
            point.swaps_stopped_s = since or point.swaps_stopped_s
            if stats := self.feeder.by_version.get(point.version):
                point.sampled = stats.samples
                point.sampled_correct = stats.correct
                point.distinct_fraction = stats.distinct_sum / stats.problems
                point.all_wrong_fraction = stats.all_wrong / stats.problems
                point.all_right_fraction = stats.all_right / stats.problems

    def _training_s(self) -> float:
        """Seconds of training of the run, a resumed run's earlier ones included."""
        if self.training_started is None:
            return self.trained_before_s
        return self.trained_before_s + time.monotonic() - self.training_started

    def _out_of_time(self) -> bool:
        """Whether this invocation's time budget is spent (a resumed run gets a new one)."""
        return self._training_s() - self.trained_before_s > self.config.time_budget_s

    async def _finished(
        self, curve: list[EvalPoint], new_points: int, feeding: asyncio.Task[None]
    ) -> bool:
        """Whichever comes first: the time budget, `swaps` hot swaps, the trainer's last step
        or the last epoch, each once the version it ends on is measured."""
        swaps = self.config.swaps
        if self._out_of_time() or (swaps is not None and new_points >= swaps):
            return True
        if self.trainer_finished is not None and self.trainer_finished():
            # the trainer published its last checkpoint before it exited
            return (await self.generator.weights()).version == curve[-1].version
        if not (self.feeder.finished and feeding.done()) or self.queue is None:
            return False
        room = await self.queue.room()
        if room.backlog or room.reserved or self.checkpoint_root is None:
            return False  # samples still to train on, or being generated
        newest = ckpt.latest_checkpoint(self.checkpoint_root)
        return newest is None or ckpt.read_state(newest).version == curve[-1].version

    async def aclose(self) -> None:
        await asyncio.gather(
            self.generator.aclose(),
            self.feeder.client.aclose(),
            self.verifier.aclose(),
            self.heldout.aclose(),
        )
