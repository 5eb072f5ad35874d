"""The demo: feed training problems to the running pipeline, and measure agent A on held-out
problems before training and after every hot swap.

Held-out problems go straight to the engine (greedy, never enqueued, so the trainer never sees
them) and are graded by the verifier's rule path against their reference answers, with a
binomial standard error. Diversity costs no extra generation: it is measured on the training
samples each version generates, as the mean fraction of distinct final answers among the n
samples of a problem (a loop collapsing onto one answer per problem drives it towards 1/n).
The curve is saved as `curve.json` and `curve.png` in the run directory after every point.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from pydantic import BaseModel, Field

from gvloop.curve import EvalPoint, plot_curve
from gvloop.problems import PROBLEM_SETS, load_problems
from services.clients import (
    GeneratorClient,
    RetryPolicy,
    ServiceError,
    ServiceUnavailableError,
    VerifierClient,
)
from services.queue import SampleQueue
from services.schemas import (
    GenerateRequest,
    ProblemIn,
    SamplingParams,
    VerifyBatchRequest,
    VerifyRequest,
)

if TYPE_CHECKING:
    from gvloop.runstate import RunState

logger = logging.getLogger(__name__)


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


class DemoConfig(BaseModel):
    train_file: Path = PROBLEM_SETS["addition"].train
    heldout_file: Path = PROBLEM_SETS["addition"].heldout
    heldout_size: int = Field(default=100, ge=1)
    problems_per_request: int = Field(default=8, ge=1)
    """Each feeder request's problems: a request waits for room for all its samples, so
    smaller ones keep the queue fuller below its bound (and the engine's steps shorter)."""
    samples_per_problem: int = Field(default=4, ge=1)
    concurrent_requests: int = Field(default=2, ge=1)
    sampling: SamplingParams = SamplingParams(temperature=0.8, max_tokens=48)
    eval_max_tokens: int = 48
    live_eval: bool = True
    """Evaluate each version on the engine as it comes; False: only record when each began to
    be served, and its checkpoint (the learning benchmark evaluates those afterwards, off the
    clock, as it does the naive loop's)."""
    swaps: int | None = Field(default=None, ge=0, description="Stop after this many hot swaps.")
    time_budget_s: float = Field(
        default=900.0, gt=0, description="Seconds of training: feeding stops after this."
    )
    seed: int = 0


@dataclass(frozen=True)
class Served:
    """When a version began to be served: seconds of training, samples fed by then."""

    at_s: float
    samples_fed: int
    checkpoint_dir: str | None


@dataclass
class _SampleStats:
    samples: int = 0
    correct: int = 0
    problems: int = 0
    distinct_sum: float = 0.0

    def add(self, answers: list[str | None], correct: int) -> None:
        self.samples += len(answers)
        self.correct += correct
        self.problems += 1
        self.distinct_sum += len(set(answers)) / len(answers)


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
    ) -> None:
        """`queue`: the sample queue, whose room the feeders wait for rather than be refused;
        `state`: what the console shows, told of every sample fed and every point."""
        self.config = config
        self.out_dir = out_dir
        self.generator = GeneratorClient(generator_url, generator_token, timeout_s=900)
        # The feeders' own client does not retry: a full queue is a state they wait out, not an
        # error to retry (and log) every few seconds.
        self.feeder = GeneratorClient(
            generator_url, generator_token, timeout_s=900, policy=RetryPolicy(attempts=1)
        )
        self.queue = queue
        self.state = state
        self.verifier = VerifierClient(verifier_url, verifier_token, timeout_s=300)
        self.engine = httpx.AsyncClient(base_url=engine_url, timeout=300)
        self.heldout = load_problems(config.heldout_file, limit=config.heldout_size)
        self.train = load_problems(config.train_file)
        self.submitted = 0
        self.by_version: dict[int, _SampleStats] = defaultdict(_SampleStats)
        self.training_started: float | None = None

    async def run(self) -> list[EvalPoint]:
        """Evaluate, then train for the time budget (or until `swaps` hot swaps), evaluating
        each newly served version while the feeders and the trainer go on; returns the curve."""
        model = await self._served_model()
        first = await self.generator.weights()
        curve = [await self.point(model, first.version, Served(0.0, 0, first.checkpoint_dir))]
        self.training_started = time.monotonic()
        if self.state is not None:
            self.state.training_started = self.training_started
            self.state.phase = "training"
        stop = asyncio.Event()
        feeders = [
            asyncio.create_task(self._feed(i, stop)) for i in range(self.config.concurrent_requests)
        ]
        # A version's point is stamped when it began to be served, not when its evaluation
        # ends: the evaluation is the benchmark's cost, not the pipeline's (the naive loop's
        # clock stops while it evaluates). So the served version is watched throughout.
        served: dict[int, Served] = {}
        watcher = asyncio.create_task(self._watch_served(served, stop))
        try:
            while not self._finished(curve):
                await asyncio.sleep(1.0)
                for task in (*feeders, watcher):
                    if task.done():
                        task.result()  # a feeder that failed fails the demo, not silently
                latest = max(served, default=curve[-1].version)
                if latest != curve[-1].version:
                    curve.append(await self.point(model, latest, served[latest], curve))
        finally:
            stop.set()
            watcher.cancel()
            if self.state is not None:
                self.state.training_ended = time.monotonic()
                self.state.phase = "training over: stopping"
            await asyncio.gather(*feeders, return_exceptions=True)
        self._attach_sample_stats(curve)
        if self.config.live_eval:
            self.save(curve)
        return curve

    async def _watch_served(self, served: dict[int, Served], stop: asyncio.Event) -> None:
        while not stop.is_set():
            weights = await self.generator.weights()
            if weights.version not in served:
                served[weights.version] = Served(
                    self._training_s(), self.submitted, weights.checkpoint_dir
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
        """`point` with the held-out accuracy of its version."""
        version = point.version
        if self.state is not None:
            self.state.phase = f"evaluating v{version} on {len(self.heldout)} held-out problems"
        greedy = SamplingParams(temperature=0.0, max_tokens=self.config.eval_max_tokens)
        solutions = await self._complete(model, self.heldout, greedy)
        graded = await self._grade(self.heldout, solutions)
        point = point.model_copy(
            update={"problems": len(graded), "correct": sum(ok for ok, _ in graded)}
        )
        logger.info(
            "held-out v%d, served from %.0fs of training: accuracy %.1f%% ± %.1f (%d problems)%s",
            version,
            point.at_s,
            100 * point.accuracy,
            100 * point.stderr,
            point.problems,
            self._previous_version_note(curve),
        )
        if curve is not None:
            self._attach_sample_stats([*curve, point])
            self.save([*curve, point])
        if self.state is not None:
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
        if not curve or not (stats := self.by_version.get(curve[-1].version)):
            return ""
        return (
            f"; v{curve[-1].version} sampled {stats.samples} training answers, "
            f"{100 * stats.correct / stats.samples:.0f}% correct, "
            f"{stats.distinct_sum / stats.problems:.2f} distinct per problem"
        )

    def _attach_sample_stats(self, curve: list[EvalPoint]) -> None:
        for point in curve:
            if stats := self.by_version.get(point.version):
                point.sampled = stats.samples
                point.sampled_correct = stats.correct
                point.distinct_fraction = stats.distinct_sum / stats.problems

    async def _feed(self, worker: int, stop: asyncio.Event) -> None:
        """Submit training problems until stopped, waiting while the queue has no room for a
        request (the trainer is behind); any other failure is logged, waited on and retried."""
        rng = random.Random(self.config.seed + worker)
        problems = itertools.cycle(rng.sample(self.train, len(self.train)))
        planned = self.config.problems_per_request * self.config.samples_per_problem
        while not stop.is_set() and not self._out_of_time():
            await self._wait_for_room(planned, stop)
            batch = list(itertools.islice(problems, self.config.problems_per_request))
            request = GenerateRequest(
                problems=batch, n=self.config.samples_per_problem, sampling=self.config.sampling
            )
            try:
                response = await self.feeder.generate(request)
            except (ServiceUnavailableError, ServiceError) as exc:
                # the other feeder's request took the room between our check and our request
                if not await self._has_room(planned):
                    continue
                logger.warning("feeder %d: %s; waiting 5s", worker, exc)
                await asyncio.sleep(5.0)
                continue
            for result in response.data:
                for version, group in itertools.groupby(
                    result.solutions, key=lambda s: s.weight_version
                ):
                    solutions = list(group)
                    self.by_version[version].add(
                        [s.feedback.extracted_answer for s in solutions],
                        sum(s.feedback.is_correct for s in solutions),
                    )
            solutions = [s for r in response.data for s in r.solutions]
            self.submitted += len(solutions)
            if self.state is not None:
                self.state.fed = self.submitted
                self.state.fed_correct += sum(s.feedback.is_correct for s in solutions)
            logger.info(
                "fed %d samples (%d correct), %d in total, served version %d",
                len(solutions),
                sum(s.feedback.is_correct for s in solutions),
                self.submitted,
                solutions[0].weight_version if solutions else -1,
            )

    async def _has_room(self, planned: int) -> bool:
        """Whether the queue takes `planned` more samples now (unknown without a queue: yes)."""
        return self.queue is None or (await self.queue.room()).free >= planned

    async def _wait_for_room(self, planned: int, stop: asyncio.Event) -> None:
        waited = False
        while not stop.is_set() and not self._out_of_time() and not await self._has_room(planned):
            waited = True
            if self.state is not None:
                self.state.feeders_waiting = True
            await asyncio.sleep(1.0)
        if waited and self.state is not None:
            self.state.feeders_waiting = False

    async def _complete(
        self, model: str, problems: list[ProblemIn], sampling: SamplingParams
    ) -> list[str]:
        limit = asyncio.Semaphore(16)

        async def one(problem: ProblemIn) -> str:
            async with limit:
                response = await self.engine.post(
                    "/v1/chat/completions",
                    json={
                        "model": model,
                        "messages": [{"role": "user", "content": problem.problem}],
                        **sampling.model_dump(exclude_none=True),
                    },
                )
                response.raise_for_status()
                return response.json()["choices"][0]["message"]["content"] or ""

        return await asyncio.gather(*(one(p) for p in problems))

    async def _grade(
        self, problems: list[ProblemIn], solutions: list[str]
    ) -> list[tuple[bool, str | None]]:
        request = VerifyBatchRequest(
            items=[
                VerifyRequest(
                    problem=p.problem,
                    solution=s,
                    reference_answer=p.reference_answer,
                    method="rule",
                )
                for p, s in zip(problems, solutions, strict=True)
            ]
        )
        response = await self.verifier.verify_batch(request)
        return [(r.is_correct, r.extracted_answer) for r in response.data]

    async def _served_model(self) -> str:
        response = await self.engine.get("/v1/models")
        response.raise_for_status()
        return response.json()["data"][0]["id"]

    def _training_s(self) -> float:
        return 0.0 if self.training_started is None else time.monotonic() - self.training_started

    def _out_of_time(self) -> bool:
        return self._training_s() > self.config.time_budget_s

    def _finished(self, curve: list[EvalPoint]) -> bool:
        swaps = self.config.swaps
        return self._out_of_time() or (swaps is not None and len(curve) > swaps)

    async def aclose(self) -> None:
        await asyncio.gather(
            self.generator.aclose(),
            self.feeder.aclose(),
            self.verifier.aclose(),
            self.engine.aclose(),
        )
