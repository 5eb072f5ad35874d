"""From a request to a verdict: the rules, the judge, and how their numbers combine.

Which method decides (`decided_by`):
- `function` (method "function", or "auto" when GVLOOP_VERIFIER_FUNCTION names one): the
  user's verifier function alone (`agent_b/functions.py`), in the rule workers; its scores
  stand as it returned them.
- `rule`   (method "rule", or "auto" with a reference answer, the default for the pipeline):
  rules only, the judge is never called.
- `both`   (method "auto" with a reference answer and `judge_reasoning` on): the rule decides
  `is_correct` and `solution_score`; the judge adds its view of the steps to `reasoning_score`.
- `model`  (method "auto" without a reference, or method "model"): the judge decides
  `is_correct` and `solution_score`; a reference answer is then ignored, which measures the
  judge on its own (the generation-verification gap).
Whenever the judge is asked (`model`, `both`) and its server reports a weight version (agent
A's engine as the judge: self-verification), the verdict carries it (`judge_version`).

Why the pipeline's default leaves the judge out: with a reference answer correctness is
certain, and a judge as small as the default model (135M) verifies barely better than chance
(the relative generation-verification gap of small models is near zero), while on a CPU its
forward pass costs about as much as generating the sample. The arithmetic check is exact and
costs microseconds. With a judge that can verify (a big model behind the openai backend), turn
`judge_reasoning` on.

The scores:
- solution_score = 1 if the extracted answer is equivalent to the reference else 0 (rule; a
  comparison still undecided at its deadline counts as not equivalent); p_correct, the judge's
  p(Yes) to "is the final answer correct?" (model).
- is_correct = solution_score == 1 (rule); p_correct >= threshold (model).
- reasoning_score = w * a + (1 - w) * p_reasoning, with
  a = fraction of the `x op y = z` statements in the solution that hold when re-evaluated,
  n = how many were checked, w = n / (n + 1) (0 when none: nothing to check),
  p_reasoning = the judge's p(Yes) to "is every step valid?"; when the judge is not asked
  (method "rule", or `judge_reasoning` off) the outcome stands in for it: solution_score.
  One checked statement weighs as much as the judge, each further one more: a wrong stated
  calculation is certain evidence of a broken step, the judge's opinion is not.
  Why the outcome and not 0.5 ("no opinion") when nothing else speaks about the steps: the
  loss rewards S = (solution_score + reasoning_score) / 2, and with 0.5 every wrong answer
  without a checkable step got S = 0.25, so the reward term pushed wrong answers up too. With
  the outcome, such an answer gets S = 0 and a right one S = 1; steps that were checked still
  move it (a right answer reached through a wrong calculation scores below 1).
"""

from __future__ import annotations

import asyncio
import logging
import time

from agent_b.errors import JudgeUnavailableError
from agent_b.functions import FunctionFailedError, load_function
from agent_b.judges import Judge, JudgeQuery, Question, setup_judge
from agent_b.metrics import VerifierMetrics
from agent_b.rules import ArithmeticCheck, check_arithmetic, extract_answer
from agent_b.settings import VerifierSettings
from agent_b.workers import RuleWorkers
from services.schemas import DecidedBy, VerifyRequest, VerifyResponse

logger = logging.getLogger(__name__)


def compute_reasoning_score(
    arithmetic: ArithmeticCheck, p_reasoning: float | None, solution_score: float
) -> float:
    """w * a + (1 - w) * p with w = n / (n + 1), p = solution_score when the judge was not
    asked; see the module docstring."""
    judge = solution_score if p_reasoning is None else p_reasoning
    if arithmetic.fraction is None:
        return judge
    weight = arithmetic.checked / (arithmetic.checked + 1)
    return weight * arithmetic.fraction + (1 - weight) * judge


def decided_by(request: VerifyRequest, settings: VerifierSettings) -> DecidedBy:
    if request.method == "function" or (request.method == "auto" and settings.function):
        return "function"
    if request.method == "model" or request.reference_answer is None:
        return "model"
    if request.method == "rule" or not settings.judge_reasoning:
        return "rule"
    return "both"


class Verifier:
    """Scores requests; owns the math-verify workers and the judge."""

    def __init__(
        self,
        settings: VerifierSettings,
        workers: RuleWorkers,
        judge: Judge,
        metrics: VerifierMetrics,
    ) -> None:
        self.settings = settings
        self.workers = workers
        self.judge = judge
        self.metrics = metrics
        self.load_error: str | None = None

    async def load(self) -> None:
        """Warm the rule workers and load the judge; a failure is kept for /health."""
        try:
            await asyncio.gather(self.workers.warm_up(), self.judge.load())
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            logger.error("judge failed to load (%s): %s", self.judge.name, self.load_error)

    async def _ask(self, problem: str, solution: str, question: Question) -> float:
        if not self.judge.ready:
            state = f"failed to load: {self.load_error}" if self.load_error else "is loading"
            self.metrics.errors.labels("judge_unavailable").inc()
            raise JudgeUnavailableError(f"the judge model {state}")
        try:
            return await asyncio.wait_for(
                self.judge.p_yes(JudgeQuery(problem, solution, question)),
                self.settings.judge_timeout_s,
            )
        except TimeoutError as exc:
            self.metrics.errors.labels("judge_timeout").inc()
            raise JudgeUnavailableError(
                f"the judge did not answer within {self.settings.judge_timeout_s:.0f}s"
            ) from exc

    async def _judge_version(self) -> int | None:
        if not self.judge.ready:
            return None  # _ask says why
        return await self.judge.weight_version()

    async def verify(self, request: VerifyRequest) -> VerifyResponse:
        started = time.perf_counter()
        method = decided_by(request, self.settings)
        extracted = extract_answer(request.solution)
        if method == "function":
            return await self._by_function(request, extracted, started)
        arithmetic = check_arithmetic(request.solution)
        p_correct: float | None = None
        # the judge's version, read before and after its questions (a gvloop engine's changes
        # with every hot swap): the older one, as agent A records a sample's
        asked = method in ("model", "both")
        before = await self._judge_version() if asked else None
        if method == "model":
            p_correct, p_reasoning = await asyncio.gather(
                self._ask(request.problem, request.solution, "correct"),
                self._ask(request.problem, request.solution, "reasoning"),
            )
            is_correct = p_correct >= self.settings.threshold
            solution_score = p_correct
        else:
            assert request.reference_answer is not None
            equivalent, p_reasoning = await asyncio.gather(
                self._equivalent(extracted, request.reference_answer),
                self._ask(request.problem, request.solution, "reasoning")
                if method == "both"
                else _none(),
            )
            is_correct = equivalent is True
            solution_score = float(is_correct)
        after = await self._judge_version() if asked else None
        self.metrics.verifications.labels(method, str(is_correct).lower()).inc()
        return VerifyResponse(
            solution_score=solution_score,
            reasoning_score=compute_reasoning_score(arithmetic, p_reasoning, solution_score),
            is_correct=is_correct,
            extracted_answer=extracted,
            decided_by=method,
            judge_p_correct=p_correct,
            judge_p_reasoning=p_reasoning,
            judge_version=None if before is None or after is None else min(before, after),
            arithmetic_checked=arithmetic.checked,
            arithmetic_correct=arithmetic.correct,
            model=self.judge.name,
            latency_ms=(time.perf_counter() - started) * 1000,
        )

    async def _by_function(
        self, request: VerifyRequest, extracted: str | None, started: float
    ) -> VerifyResponse:
        if not self.settings.function:
            raise FunctionFailedError(
                "method 'function' needs a verifier function: this server has none "
                "(GVLOOP_VERIFIER_FUNCTION)"
            )
        try:
            verdict = await self.workers.call_function(request)
        except FunctionFailedError as exc:
            self.metrics.errors.labels("function_failed").inc()
            logger.warning("%s", exc)
            raise
        self.metrics.verifications.labels("function", str(verdict.is_correct).lower()).inc()
        return VerifyResponse(
            **verdict.model_dump(exclude={"answer"}),
            extracted_answer=verdict.answer or extracted,
            decided_by="function",
            model=self.settings.function,
            latency_ms=(time.perf_counter() - started) * 1000,
        )

    async def _equivalent(self, extracted: str | None, reference: str) -> bool | None:
        if extracted is None:
            return False
        equivalent = await self.workers.equivalent(extracted, reference)
        if equivalent is None:
            self.metrics.errors.labels("comparison_undecided").inc()
        return equivalent

    async def verify_many(self, requests: list[VerifyRequest]) -> list[VerifyResponse]:
        """All at once, so their judge questions share forward passes."""
        return list(await asyncio.gather(*(self.verify(r) for r in requests)))

    async def aclose(self) -> None:
        await self.judge.aclose()
        self.workers.close()


async def _none() -> None:
    return None


def setup_verifier(settings: VerifierSettings, metrics: VerifierMetrics) -> Verifier:
    """The verifier the settings describe; `await verifier.load()` before asking the judge.
    A verifier function that cannot be loaded raises ValueError here, before anything starts."""
    if settings.function:
        load_function(settings.function)
    workers = RuleWorkers(
        settings.rule_workers, settings.rule_timeout_s, settings.function, settings.threshold
    )
    return Verifier(settings, workers, setup_judge(settings, metrics), metrics)
