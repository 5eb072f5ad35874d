"""Feeding a run's training problems to the generator: each epoch in a shuffled order of its
own, several requests at once, each waiting for room in the sample queue rather than be
refused. Where the feeding has got to is saved after every request, so that a resumed run
(`gvloop up --resume`) goes on from its place in the training data."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field

from gvloop.metrics import distinct_fraction
from gvloop.runstate import RunState
from services.clients import GeneratorClient, ServiceError, ServiceUnavailableError
from services.queue import SampleQueue
from services.schemas import GenerateRequest, GenerateResponse, ProblemIn, SamplingParams

logger = logging.getLogger(__name__)


class FeedConfig(BaseModel):
    problems_per_request: int = Field(default=8, ge=1)
    """Each feeder request's problems: a request waits for room for all its samples, so
    smaller ones keep the queue fuller below its bound (and the engine's steps shorter)."""
    samples_per_problem: int = Field(default=4, ge=1)
    concurrent_requests: int = Field(default=2, ge=1)
    sampling: SamplingParams = SamplingParams(temperature=0.8, max_tokens=48)
    system_prompt: str | None = None
    """Sent before each problem that has no system message of its own."""
    epochs: int | None = Field(
        default=None,
        ge=1,
        description="Feed each training problem this many times, then stop once the trainer "
        "has trained on every sample and its last checkpoint is served and measured.",
    )
    seed: int = 0
    """Of each epoch's order (epoch e is shuffled with seed + e)."""


class FeedProgress(BaseModel):
    """Where a run's feeding has got to (`progress.json` in its run directory)."""

    position: int = 0
    """Problems taken from the training order so far, every epoch counted."""
    samples: int = 0
    """Samples fed (generated, verified and queued or returned)."""
    training_s: float = 0.0
    """Seconds of training so far."""

    @classmethod
    def load(cls, path: Path) -> FeedProgress:
        return cls.model_validate_json(path.read_text()) if path.exists() else cls()

    def save(self, path: Path) -> None:
        partial = path.with_suffix(".tmp")
        partial.write_text(self.model_dump_json())
        partial.replace(path)  # never half a file, whenever the run is stopped


@dataclass
class SampleStats:
    """How one weight version sampled the training problems. A problem whose samples came
    from two versions (a swap during its request) counts once for each, with its samples of
    that version."""

    samples: int = 0
    correct: int = 0
    problems: int = 0
    distinct_sum: float = 0.0
    all_wrong: int = 0
    """Problems none of whose samples was right."""
    all_right: int = 0
    """Problems all of whose samples were right."""

    def add(self, answers: list[str | None], correct: int) -> None:
        self.samples += len(answers)
        self.correct += correct
        self.problems += 1
        self.distinct_sum += distinct_fraction(answers)
        self.all_wrong += correct == 0
        self.all_right += correct == len(answers)


class Feeder:
    def __init__(
        self,
        config: FeedConfig,
        train: list[ProblemIn],
        client: GeneratorClient,
        state: RunState,
        queue: SampleQueue | None = None,
        progress: FeedProgress | None = None,
        progress_file: Path | None = None,
    ) -> None:
        """`client`: one that does not retry (a full queue is waited out, not retried);
        `state`: told of every sample fed and of waits for room; `queue`: whose room the
        feeders wait for (None: they do not wait); `progress`: where a resumed run's feeding
        had got to, saved to `progress_file` after each request."""
        self.config = config
        self.train = train
        self.client = client
        self.queue = queue
        self.state = state
        self.progress = progress or FeedProgress()
        self.progress_file = progress_file
        self.by_version: dict[int, SampleStats] = defaultdict(SampleStats)
        self._orders: dict[int, list[ProblemIn]] = {}

    @property
    def limit(self) -> int | None:
        """Problems to feed in all (`epochs` passes over the training set); None: no end."""
        epochs = self.config.epochs
        return None if epochs is None else epochs * len(self.train)

    @property
    def finished(self) -> bool:
        """Whether every epoch has been fed."""
        return self.limit is not None and self.progress.position >= self.limit

    def take(self) -> list[ProblemIn]:
        """The next request's problems (fewer, or none, at the end of the last epoch)."""
        size = self.config.problems_per_request
        if self.limit is not None:
            size = max(0, min(size, self.limit - self.progress.position))
        start = self.progress.position
        self.progress.position += size
        return [self._problem_at(position) for position in range(start, start + size)]

    def _problem_at(self, position: int) -> ProblemIn:
        epoch, index = divmod(position, len(self.train))
        if epoch not in self._orders:
            rng = random.Random(self.config.seed + epoch)
            self._orders = {epoch: rng.sample(self.train, len(self.train))}
        return self._orders[epoch][index]

    async def run(self, stop: asyncio.Event, clock: Callable[[], float]) -> None:
        """Feed with `concurrent_requests` requests at once until stopped or every epoch is
        fed; `clock`: the run's seconds of training, saved with the progress."""
        workers = range(self.config.concurrent_requests)
        await asyncio.gather(*(self._worker(i, stop, clock) for i in workers))

    async def _worker(self, worker: int, stop: asyncio.Event, clock: Callable[[], float]) -> None:
        """Submit requests until stopped, waiting while the queue has no room for one (the
        trainer is behind); any other failure is logged and its problems skipped."""
        planned = self.config.problems_per_request * self.config.samples_per_problem
        batch: list[ProblemIn] = []
        while not stop.is_set():
            batch = batch or self.take()
            if not batch:
                return
            await self._wait_for_room(planned, stop)
            if stop.is_set():
                return
            request = GenerateRequest(
                problems=batch,
                n=self.config.samples_per_problem,
                sampling=self.config.sampling,
                system_prompt=self.config.system_prompt,
            )
            try:
                response = await self.client.generate(request)
            except (ServiceUnavailableError, ServiceError) as exc:
                if not await self._has_room(planned):
                    continue  # the other feeder took the room first: this batch waits its turn
                logger.warning(
                    "feeder %d: %s; %d problems skipped, waiting 5s", worker, exc, len(batch)
                )
                batch = []
                await asyncio.sleep(5.0)
                continue
            batch = []
            self._record(response, clock())

    def _record(self, response: GenerateResponse, training_s: float) -> None:
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
        correct = sum(s.feedback.is_correct for s in solutions)
        self.progress.samples += len(solutions)
        self.progress.training_s = training_s
        if self.progress_file is not None:
            self.progress.save(self.progress_file)
        self.state.fed = self.progress.samples
        self.state.fed_correct += correct
        logger.info(
            "fed %d samples (%d correct), %d in total, served version %d",
            len(solutions),
            correct,
            self.progress.samples,
            solutions[0].weight_version if solutions else -1,
        )

    async def _has_room(self, planned: int) -> bool:
        """Whether the queue takes `planned` more samples now (unknown without a queue: yes)."""
        return self.queue is None or (await self.queue.room()).free >= planned

    async def _wait_for_room(self, planned: int, stop: asyncio.Event) -> None:
        waited = False
        while not stop.is_set() and not await self._has_room(planned):
            waited = True
            self.state.feeders_waiting = True
            await asyncio.sleep(1.0)
        if waited:
            self.state.feeders_waiting = False
