"""The demo: feed training problems to the running pipeline, and measure agent A on held-out
problems before training and after every hot swap.

Held-out problems go straight to the engine (greedy, never enqueued, so the trainer never sees
them) and are graded by the verifier's rule path against their reference answers. Diversity is
the mean fraction of distinct final answers among `diversity_samples` sampled solutions per
problem: a loop that collapses onto one answer per problem drives it towards 1/n.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from pydantic import BaseModel, Field

from gvloop.problems import BUILTIN_HELDOUT, BUILTIN_TRAIN, load_problems
from services.clients import (
    GeneratorClient,
    ServiceError,
    ServiceUnavailableError,
    VerifierClient,
)
from services.schemas import (
    GenerateRequest,
    ProblemIn,
    SamplingParams,
    VerifyBatchRequest,
    VerifyRequest,
)

logger = logging.getLogger(__name__)


class DemoConfig(BaseModel):
    train_file: Path = BUILTIN_TRAIN
    heldout_file: Path = BUILTIN_HELDOUT
    heldout_size: int = Field(default=50, ge=1)
    problems_per_request: int = Field(default=16, ge=1)
    samples_per_problem: int = Field(default=4, ge=1)
    concurrent_requests: int = Field(default=2, ge=1)
    sampling: SamplingParams = SamplingParams(temperature=0.8, max_tokens=48)
    eval_max_tokens: int = 48
    diversity_samples: int = Field(default=4, ge=0)
    swaps: int = Field(default=2, ge=0, description="Stop after this many hot swaps.")
    time_budget_s: float = Field(default=1200.0, gt=0, description="Stop feeding after this.")
    seed: int = 0


@dataclass
class EvalPoint:
    version: int
    accuracy: float
    distinct_fraction: float | None
    problems: int
    at_s: float
    samples_submitted: int


class Demo:
    def __init__(
        self,
        config: DemoConfig,
        generator_url: str,
        engine_url: str,
        verifier_url: str,
        generator_token: str | None = None,
        verifier_token: str | None = None,
    ) -> None:
        self.config = config
        self.generator = GeneratorClient(generator_url, generator_token, timeout_s=900)
        self.verifier = VerifierClient(verifier_url, verifier_token, timeout_s=300)
        self.engine = httpx.AsyncClient(base_url=engine_url, timeout=300)
        self.heldout = load_problems(config.heldout_file, limit=config.heldout_size)
        self.train = load_problems(config.train_file)
        self.submitted = 0
        self.started = time.monotonic()

    async def run(self) -> list[EvalPoint]:
        """Evaluate, then train until `swaps` hot swaps (or the time budget), evaluating after
        each swap; returns the curve."""
        model = await self._served_model()
        version = (await self.generator.weights()).version
        curve = [await self.evaluate(model, version)]
        stop = asyncio.Event()
        feeders = [
            asyncio.create_task(self._feed(i, stop)) for i in range(self.config.concurrent_requests)
        ]
        try:
            while len(curve) <= self.config.swaps and not self._out_of_time():
                await asyncio.sleep(2.0)
                served = (await self.generator.weights()).version
                if served != version:
                    version = served
                    logger.info("agent A now serves weight version %d: evaluating", version)
                    curve.append(await self.evaluate(model, version))
        finally:
            stop.set()
            await asyncio.gather(*feeders, return_exceptions=True)
        return curve

    async def evaluate(self, model: str, version: int) -> EvalPoint:
        greedy = SamplingParams(temperature=0.0, max_tokens=self.config.eval_max_tokens)
        solutions = await self._complete(model, self.heldout, greedy, n=1)
        graded = await self._grade(self.heldout, [s[0] for s in solutions])
        accuracy = sum(ok for ok, _ in graded) / len(graded)
        distinct = None
        if self.config.diversity_samples:
            sampled = await self._complete(
                model, self.heldout, self.config.sampling, n=self.config.diversity_samples
            )
            fractions = []
            for problem, texts in zip(self.heldout, sampled, strict=True):
                answers = await self._grade([problem] * len(texts), texts)
                fractions.append(len({a for _, a in answers}) / len(texts))
            distinct = sum(fractions) / len(fractions)
        point = EvalPoint(
            version,
            accuracy,
            distinct,
            len(self.heldout),
            time.monotonic() - self.started,
            self.submitted,
        )
        logger.info(
            "held-out v%d: accuracy %.1f%% (%d problems), distinct answers %s",
            version,
            100 * accuracy,
            len(self.heldout),
            "-" if distinct is None else f"{distinct:.2f}",
        )
        return point

    async def _feed(self, worker: int, stop: asyncio.Event) -> None:
        """Submit training problems until stopped; on backpressure (429) or a busy service the
        client already retried, so wait a little and go on."""
        rng = random.Random(self.config.seed + worker)
        problems = itertools.cycle(rng.sample(self.train, len(self.train)))
        while not stop.is_set() and not self._out_of_time():
            batch = list(itertools.islice(problems, self.config.problems_per_request))
            request = GenerateRequest(
                problems=batch, n=self.config.samples_per_problem, sampling=self.config.sampling
            )
            try:
                response = await self.generator.generate(request)
            except (ServiceUnavailableError, ServiceError) as exc:
                logger.warning("feeder %d: %s; waiting 5s", worker, exc)
                await asyncio.sleep(5.0)
                continue
            solutions = [s for r in response.data for s in r.solutions]
            self.submitted += len(solutions)
            correct = sum(s.feedback.is_correct for s in solutions)
            logger.info(
                "fed %d samples (%d correct), %d in total, served version %d",
                len(solutions),
                correct,
                self.submitted,
                solutions[0].weight_version if solutions else -1,
            )

    async def _complete(
        self, model: str, problems: list[ProblemIn], sampling: SamplingParams, n: int
    ) -> list[list[str]]:
        limit = asyncio.Semaphore(16)

        async def one(problem: ProblemIn) -> list[str]:
            async with limit:
                response = await self.engine.post(
                    "/v1/chat/completions",
                    json={
                        "model": model,
                        "messages": [{"role": "user", "content": problem.problem}],
                        "n": n,
                        **sampling.model_dump(exclude_none=True),
                    },
                )
                response.raise_for_status()
                return [c["message"]["content"] or "" for c in response.json()["choices"]]

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

    def _out_of_time(self) -> bool:
        return time.monotonic() - self.started > self.config.time_budget_s

    async def aclose(self) -> None:
        await asyncio.gather(self.generator.aclose(), self.verifier.aclose(), self.engine.aclose())


def curve_table(curve: list[EvalPoint]) -> str:
    """The curve as a plain-text table (also what the learning benchmark prints)."""
    lines = [
        "| version | at (s) | samples fed | held-out accuracy | distinct answers |",
        "|---|---|---|---|---|",
    ]
    for p in curve:
        distinct = "-" if p.distinct_fraction is None else f"{p.distinct_fraction:.2f}"
        lines.append(
            f"| v{p.version} | {p.at_s:.0f} | {p.samples_submitted} | "
            f"{100 * p.accuracy:.1f}% ({p.problems}) | {distinct} |"
        )
    return "\n".join(lines)
