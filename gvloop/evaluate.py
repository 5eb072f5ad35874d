"""`gvloop eval`: the numbers the field reports for a model on a held-out set.

- pass@1: one greedy answer per problem, right or not (binomial standard error).
- pass@k: from n >= k sampled answers per problem of which c are right, the unbiased estimator
  1 - C(n-c, k) / C(n, k) (Chen et al., 2021), averaged over problems.
- maj@k: the most frequent final answer among the first k samples (ties: the one seen first)
  is right.
- distinct: the fraction of distinct final answers among a problem's n samples (1/n: all the
  same; a loop collapsing onto one answer drives it down).

Each with its standard error over problems (the formulas: `gvloop/metrics.py`, shared with
every point of a run's curve). Answers are graded by the verifier's own code in
this process, as the loop grades its samples: the rules against the reference answer, or the
user's verifier function. A model directory answers through transformers in this process
(`gvloop/hf_generation.py`, the naive loop's evaluator too); a running generator through its
OpenAI-compatible API, so its served version is what is measured.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import httpx
from pydantic import BaseModel, Field, model_validator

from agent_b.metrics import VerifierMetrics
from agent_b.scoring import Verifier, setup_verifier
from agent_b.settings import VerifierSettings
from gvloop.metrics import Metric, distinct_fraction, pass_at_k
from services.clients import bearer
from services.schemas import ProblemIn, VerifyResponse


class EvalConfig(BaseModel):
    k: int = Field(default=4, ge=1)
    n: int | None = Field(default=None, ge=1)
    """Samples per problem for pass@k, maj@k and distinct; default k."""
    temperature: float = Field(default=0.8, gt=0.0, le=2.0)
    """Of the samples (the training temperature of the demo's recipe)."""
    max_tokens: int = Field(default=48, ge=1)
    system_prompt: str | None = None
    batch_size: int = Field(default=100, ge=1)
    """Prompts per generate call (model directory)."""

    @model_validator(mode="after")
    def _n_at_least_k(self) -> EvalConfig:
        if self.n is not None and self.n < self.k:
            raise ValueError(f"n ({self.n}) must be at least k ({self.k}): pass@k needs k samples")
        return self

    @property
    def samples(self) -> int:
        return self.n or self.k


class EvalReport(BaseModel):
    model: str
    heldout: str
    problems: int
    k: int
    n: int
    temperature: float
    pass_at_1: Metric
    pass_at_k: Metric
    maj_at_k: Metric
    distinct: Metric
    grader: str
    """How answers were graded: 'rules' or the verifier function's name."""


def majority_right(verdicts: Sequence[VerifyResponse]) -> bool:
    """Whether the most frequent final answer (ties: the first seen) is a right one."""
    answers = [v.extracted_answer for v in verdicts if v.extracted_answer is not None]
    if not answers:
        return False
    top = Counter(answers).most_common(1)[0][0]  # Counter keeps first-seen order among ties
    return any(v.is_correct for v in verdicts if v.extracted_answer == top)


class Answerer(Protocol):
    async def answer(
        self, problems: list[ProblemIn], n: int, temperature: float
    ) -> list[list[str]]: ...


class LocalModel:
    """A model directory, answered through transformers in this process."""

    def __init__(self, model_dir: str, config: EvalConfig) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config
        self.tok = AutoTokenizer.from_pretrained(model_dir)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.model.to(device)

    async def answer(
        self, problems: list[ProblemIn], n: int, temperature: float
    ) -> list[list[str]]:
        return await asyncio.to_thread(self._answer, problems, n, temperature)

    def _answer(self, problems: list[ProblemIn], n: int, temperature: float) -> list[list[str]]:
        from gvloop.hf_generation import chat_prompt_ids, generate

        prompts = [chat_prompt_ids(self.tok, p.chat(self.config.system_prompt)) for p in problems]
        per_batch = max(1, self.config.batch_size // n)
        texts = []
        for start in range(0, len(prompts), per_batch):
            groups = generate(
                self.model,
                self.tok,
                prompts[start : start + per_batch],
                n,
                temperature,
                self.config.max_tokens,
            )
            texts += [[c.text for c in group] for group in groups]
        return texts


class ServedModel:
    """A running generator (or vLLM engine), through its OpenAI-compatible chat API."""

    def __init__(self, url: str, token: str | None, config: EvalConfig) -> None:
        self.config = config
        self.http = httpx.AsyncClient(base_url=url, headers=bearer(token), timeout=600)
        self.name: str | None = None

    async def answer(
        self, problems: list[ProblemIn], n: int, temperature: float
    ) -> list[list[str]]:
        if self.name is None:
            models = await self.http.get("/v1/models")
            models.raise_for_status()
            self.name = models.json()["data"][0]["id"]
        limit = asyncio.Semaphore(16)

        async def one(problem: ProblemIn) -> list[str]:
            body = {
                "model": self.name,
                "messages": [m.model_dump() for m in problem.chat(self.config.system_prompt)],
                "n": n,
                "temperature": temperature,
                "max_tokens": self.config.max_tokens,
            }
            async with limit:
                response = await self.http.post("/v1/chat/completions", json=body)
            response.raise_for_status()
            choices = sorted(response.json()["choices"], key=lambda c: c["index"])
            return [c["message"]["content"] or "" for c in choices]

        return list(await asyncio.gather(*(one(p) for p in problems)))

    async def aclose(self) -> None:
        await self.http.aclose()


async def evaluate(
    answerer: Answerer,
    problems: list[ProblemIn],
    config: EvalConfig,
    settings: VerifierSettings,
) -> tuple[Metric, Metric, Metric, Metric]:
    """(pass@1, pass@k, maj@k, distinct) of `answerer` on `problems`."""
    greedy = await answerer.answer(problems, 1, 0.0)
    sampled = await answerer.answer(problems, config.samples, config.temperature)
    verifier = setup_verifier(settings, VerifierMetrics())
    try:
        greedy_verdicts = await _grade(verifier, problems, greedy)
        sampled_verdicts = await _grade(verifier, problems, sampled)
    finally:
        await verifier.aclose()
    n, k = config.samples, config.k
    right = [sum(v.is_correct for v in group) for group in sampled_verdicts]
    return (
        Metric.mean_of([float(group[0].is_correct) for group in greedy_verdicts]),
        Metric.mean_of([pass_at_k(n, c, k) for c in right]),
        Metric.mean_of([float(majority_right(group[:k])) for group in sampled_verdicts]),
        Metric.mean_of(
            [distinct_fraction([v.extracted_answer for v in group]) for group in sampled_verdicts]
        ),
    )


async def _grade(
    verifier: Verifier, problems: list[ProblemIn], answers: list[list[str]]
) -> list[list[VerifyResponse]]:
    requests = [
        p.verify_request(text) for p, texts in zip(problems, answers, strict=True) for text in texts
    ]
    verdicts = await verifier.verify_many(requests)
    per_problem = len(answers[0])
    return [verdicts[i : i + per_problem] for i in range(0, len(verdicts), per_problem)]


def run_eval(
    model: str,
    heldout: Path | str,
    problems: list[ProblemIn],
    config: EvalConfig,
    settings: VerifierSettings,
    token: str | None = None,
) -> EvalReport:
    """Answer, grade, and report."""

    async def main() -> tuple[Metric, Metric, Metric, Metric]:
        if model.startswith(("http://", "https://")):
            served = ServedModel(model, token, config)
            try:
                return await evaluate(served, problems, config, settings)
            finally:
                await served.aclose()
        return await evaluate(LocalModel(model, config), problems, config, settings)

    pass1, passk, majk, distinct = asyncio.run(main())
    return EvalReport(
        model=model,
        heldout=str(heldout),
        problems=len(problems),
        k=config.k,
        n=config.samples,
        temperature=config.temperature,
        pass_at_1=pass1,
        pass_at_k=passk,
        maj_at_k=majk,
        distinct=distinct,
        grader=settings.function or "rules",
    )
