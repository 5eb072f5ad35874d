"""Generate -> verify -> enqueue: each problem of a request goes to an engine (n samples, the
model's chat template, the token ids vLLM used), its solutions to agent B, and each verified
sample to the Redis stream. Problems run concurrently; the first failure cancels the rest.

No sample is queued without feedback: a problem whose verification fails queues nothing. A
sample the queue refuses (full, or Redis gone) after verification is still returned, with
`queued: false`, and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from redis.exceptions import RedisError

from agent_a.engine_pool import ChatStream, EnginePool
from agent_a.errors import (
    DependencyFailedError,
    DependencyUnavailableError,
    InvalidRequestError,
    QueueBusyError,
)
from agent_a.hotswap import HotSwapper
from agent_a.metrics import GeneratorMetrics
from agent_a.settings import GeneratorSettings
from services.clients import ServiceError, ServiceUnavailableError, VerifierClient
from services.queue import QueueFullError, SampleQueue
from services.schemas import (
    MAX_TEXT_CHARS,
    ChatMessage,
    Feedback,
    GeneratedSolution,
    GenerateRequest,
    GenerateResponse,
    ProblemIn,
    ProblemResult,
    Sample,
    SampleGroup,
    SamplingParams,
    VerifyBatchRequest,
    VerifyResponse,
    new_id,
    utcnow,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Prompt:
    """What a group of samples answers: the problem and the messages the engine got."""

    problem: ProblemIn
    problem_id: str
    messages: list[ChatMessage]
    sampling: SamplingParams


@dataclass(frozen=True)
class Completion:
    """One of an engine's choices: its text, the token ids it sampled and their log-probs."""

    text: str
    token_ids: list[int]
    logprobs: list[float] | None
    finish_reason: str | None


def sampled_logprobs(choice: dict[str, Any]) -> list[float] | None:
    """log p of each token of a choice (or of a streamed chunk's choice) under the weights that
    sampled it: vLLM's raw log-probabilities, before temperature and top-p, which is what the
    trainer computes; None when the engine sent none."""
    content = (choice.get("logprobs") or {}).get("content")
    # the engine's float rounding can put a certain token a hair above 0
    return None if content is None else [min(0.0, t["logprob"]) for t in content]


class Generator:
    def __init__(
        self,
        pool: EnginePool,
        swapper: HotSwapper,
        verifier: VerifierClient,
        queue: SampleQueue,
        metrics: GeneratorMetrics,
        settings: GeneratorSettings,
    ) -> None:
        self.pool = pool
        self.swapper = swapper
        self.verifier = verifier
        self.queue = queue
        self.metrics = metrics
        self.settings = settings

    async def admit(self, request: GenerateRequest) -> None:
        """Refuse, before any work, what is over a limit or cannot be queued now."""
        planned = len(request.problems) * request.n
        if planned > self.settings.max_samples_per_request:
            raise InvalidRequestError(
                f"{len(request.problems)} problems x n={request.n} = {planned} samples, over the "
                f"limit of {self.settings.max_samples_per_request} per request: split the batch"
            )
        if request.n > 1 and request.sampling.temperature == 0:
            raise InvalidRequestError(
                "n > 1 with temperature 0 would give n identical greedy samples: use n=1 or "
                "a temperature above 0"
            )
        if planned > self.queue.bound:
            raise InvalidRequestError(
                f"{planned} samples can never fit the queue bound of {self.queue.bound}"
            )
        await self._check_room(planned)

    async def _check_room(self, planned: int) -> None:
        try:
            room = await self.queue.room()
        except RedisError as exc:
            raise DependencyUnavailableError(f"Redis (the sample queue) failed: {exc}") from exc
        # only a first look, before any work: reserve() reserves atomically, across replicas
        if planned > room.free:
            raise QueueBusyError(
                f"the sample queue holds {room.backlog} of at most {room.bound} samples "
                f"and {room.reserved} more are being generated: no room for {planned} more, "
                "the trainer is behind, retry later",
                self.settings.retry_after_s,
            )

    @contextlib.asynccontextmanager
    async def reserve(self, planned: int) -> AsyncIterator[None]:
        """Hold room in the queue for a request's samples while they are generated: a
        reservation in Redis that every generator replica counts, spent by the samples' puts."""
        async with contextlib.AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(self.queue.reserve(planned))
            except QueueFullError as exc:
                raise QueueBusyError(
                    f"the sample queue holds {exc.backlog} of at most {self.queue.bound} "
                    f"samples and {exc.reserved} more are being generated: no room for "
                    f"{planned} more, the trainer is behind, retry later",
                    self.settings.retry_after_s,
                ) from exc
            except RedisError as exc:
                raise DependencyUnavailableError(f"Redis (the sample queue) failed: {exc}") from exc
            yield

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        started = time.perf_counter()
        async with self.reserve(len(request.problems) * request.n):
            results = await _all_or_none([self._solve(p, request) for p in request.problems])
        solutions = [s for r in results for s in r.solutions]
        logger.info(
            "%d problems -> %d samples (v%s): %d correct, mean score %.2f, %d queued, %.1fs",
            len(results),
            len(solutions),
            ",".join(sorted({str(s.weight_version) for s in solutions})),
            sum(s.feedback.is_correct for s in solutions),
            sum(s.feedback.combined for s in solutions) / max(1, len(solutions)),
            sum(s.queued for s in solutions),
            time.perf_counter() - started,
        )
        return GenerateResponse(data=results, count=len(results))

    async def _solve(self, problem: ProblemIn, request: GenerateRequest) -> ProblemResult:
        prompt = Prompt(
            problem=problem,
            problem_id=problem.id or new_id(),
            messages=problem.chat(request.system_prompt),
            sampling=request.sampling,
        )
        self.metrics.in_flight.inc()
        try:
            created = utcnow()
            answer, version = await self.chat(self._chat_body(prompt.messages, request))
            completions = [
                Completion(
                    c["message"]["content"] or "",
                    c.get("token_ids") or [],
                    sampled_logprobs(c),
                    c.get("finish_reason"),
                )
                for c in sorted(answer["choices"], key=lambda c: c["index"])
            ]
            solutions = await self.verify_and_queue(
                prompt, answer.get("prompt_token_ids"), completions, version, created
            )
        finally:
            self.metrics.in_flight.dec()
        return ProblemResult(
            problem_id=prompt.problem_id,
            problem=problem.problem,
            reference_answer=problem.reference_answer,
            solutions=solutions,
        )

    async def chat(self, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """One chat completion from the least busy engine, once no swap is under way, and the
        weight version that produced it."""
        await self.swapper.wait_idle()
        with self.metrics.engine_seconds.time():
            return await self.pool.chat(body)

    @contextlib.asynccontextmanager
    async def stream_chat(self, body: dict[str, Any]) -> AsyncIterator[ChatStream]:
        """`chat`, streamed; its longest wait between chunks is recorded, apart for the
        streams a swap paused."""
        await self.swapper.wait_idle()
        pauses = self.swapper.pauses
        with self.metrics.engine_seconds.time():
            async with self.pool.stream_chat(body) as stream:
                yield stream
        during_swap = "yes" if self.swapper.pauses != pauses else "no"
        self.metrics.stream_gap_seconds.labels(during_swap).observe(stream.longest_gap_s)

    async def verify_and_queue(
        self,
        prompt: Prompt,
        prompt_ids: list[int] | None,
        completions: list[Completion],
        version: int,
        created: datetime,
    ) -> list[GeneratedSolution]:
        """Verify the completions of one prompt together, queue each with its feedback (and
        the group's), and return them as the client sees them."""
        if not prompt_ids or not all(c.token_ids for c in completions):
            raise DependencyFailedError("the engine returned no token ids (return_token_ids)")
        for c in completions:
            if c.logprobs is None or len(c.logprobs) != len(c.token_ids):
                raise DependencyFailedError(
                    f"the engine returned {len(c.logprobs or [])} log-probabilities for "
                    f"{len(c.token_ids)} sampled tokens (logprobs)"
                )
        verdicts = await self._verify(
            prompt.problem, prompt.problem_id, [c.text for c in completions]
        )
        group = SampleGroup(size=len(verdicts), correct=sum(v.is_correct for v in verdicts))
        solutions = []
        for completion, verdict in zip(completions, verdicts, strict=True):
            sample = Sample(
                problem_id=prompt.problem_id,
                problem=prompt.problem.problem,
                reference_answer=prompt.problem.reference_answer,
                messages=prompt.messages,
                prompt_token_ids=prompt_ids,
                completion_token_ids=completion.token_ids,
                completion_logprobs=completion.logprobs,
                sampling=prompt.sampling,
                solution=completion.text,
                feedback=Feedback(
                    solution_score=verdict.solution_score,
                    reasoning_score=verdict.reasoning_score,
                    is_correct=verdict.is_correct,
                ),
                # a verifier function may say any answer: cut to the field's bound
                extracted_answer=(verdict.extracted_answer or "")[:MAX_TEXT_CHARS] or None,
                group=group,
                weight_version=version,
                model=self.pool.model,
                created_at=created,
            )
            queue_id = await self._enqueue(sample)
            self.metrics.completion_tokens.inc(len(sample.completion_token_ids))
            solutions.append(
                GeneratedSolution(
                    sample_id=sample.sample_id,
                    solution=completion.text,
                    feedback=verdict,
                    weight_version=version,
                    completion_tokens=len(sample.completion_token_ids),
                    finish_reason=completion.finish_reason,
                    queued=queue_id is not None,
                    queue_id=queue_id,
                )
            )
        return solutions

    def _chat_body(self, messages: list[ChatMessage], request: GenerateRequest) -> dict[str, Any]:
        return {
            "model": self.pool.model,
            "messages": [m.model_dump() for m in messages],
            "n": request.n,
            **request.sampling.model_dump(exclude_none=True),
            "return_token_ids": True,
            "logprobs": True,
        }

    async def _verify(
        self, problem: ProblemIn, problem_id: str, solutions: list[str]
    ) -> list[VerifyResponse]:
        batch = VerifyBatchRequest(items=[problem.verify_request(s) for s in solutions])
        try:
            with self.metrics.verify_seconds.time():
                response = await self.verifier.verify_batch(batch)
        except ServiceUnavailableError as exc:
            raise DependencyUnavailableError(
                f"{exc}; no sample of problem {problem_id} was queued"
            ) from exc
        except ServiceError as exc:
            raise DependencyFailedError(
                f"{exc}; no sample of problem {problem_id} was queued"
            ) from exc
        if response.count != len(solutions):
            raise DependencyFailedError(
                f"the verifier scored {response.count} of {len(solutions)} solutions"
            )
        return response.data

    async def _enqueue(self, sample: Sample) -> str | None:
        """The sample's stream entry, or None when it could not be queued."""
        try:
            entry_id = await self.queue.put(sample)
        except QueueFullError as exc:
            self._not_queued(sample, str(exc))
            return None
        except RedisError as exc:
            # the append may have happened before the connection broke: the trainer may still
            # see it, which is why it is "not known to be queued", never "dropped"
            self._not_queued(sample, f"Redis failed ({exc}); it may have been appended first")
            return None
        self.metrics.samples.labels("true").inc()
        return entry_id

    def _not_queued(self, sample: Sample, why: str) -> None:
        logger.warning(
            "sample %s (problem %s) returned to the client but not queued: %s",
            sample.sample_id,
            sample.problem_id,
            why,
        )
        self.metrics.samples.labels("false").inc()


async def _all_or_none(coroutines: list[Awaitable[T]]) -> list[T]:
    """Await all concurrently; on the first failure cancel the others and raise it."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
