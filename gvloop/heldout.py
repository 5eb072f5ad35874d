"""The held-out set of a training run, answered by the served weights and graded by agent B:
each version's greedy accuracy (pass@1), its pass@k and distinct answers from n samples per
problem, and its answers kept problem by problem.

The problems go straight to the engine (never through the generator, so never enqueued and never
trained on) and are graded by the verifier as the loop's samples are: the rules against their
reference answers, or the user's verifier function. The greedy answers go to
`heldout-answers.jsonl`, the samples to `heldout-samples.jsonl` (one row per sample, `sample`
its index among the problem's n), so that either file alone means one thing."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

import httpx

from gvloop.metrics import Metric, distinct_fraction, pass_at_k
from services.clients import VerifierClient
from services.schemas import MAX_BATCH, ProblemIn, SamplingParams, VerifyBatchRequest

CONCURRENT_REQUESTS = 16


@dataclass(frozen=True)
class SampledEval:
    """One version's held-out samples: n per problem on the first `problems` problems."""

    n: int
    k: int
    problems: int
    pass_at_k: Metric
    distinct: Metric


class HeldOut:
    def __init__(
        self,
        problems: list[ProblemIn],
        engine_url: str,
        verifier: VerifierClient,
        out_dir: Path,
        system_prompt: str | None,
        max_tokens: int,
        sampling: SamplingParams | None = None,
        passk_n: int = 0,
        passk_k: int = 1,
        passk_problems: int | None = None,
    ) -> None:
        """`sampling`: the training samples' parameters, which the held-out samples are drawn
        with, `passk_n` per problem (0: none) on the first `passk_problems` problems (None:
        all), for pass@`passk_k`."""
        assert passk_n == 0 or (sampling is not None and passk_n >= passk_k), (passk_n, passk_k)
        self.problems = problems
        self.engine = httpx.AsyncClient(base_url=engine_url, timeout=300)
        self.verifier = verifier
        self.answers_file = out_dir / "heldout-answers.jsonl"
        self.samples_file = out_dir / "heldout-samples.jsonl"
        self.system_prompt = system_prompt
        self.greedy = SamplingParams(temperature=0.0, max_tokens=max_tokens)
        self.sampling = sampling
        self.passk_n = passk_n
        self.passk_k = passk_k
        self.sampled_problems = problems[:passk_problems]

    async def served_model(self) -> str:
        response = await self.engine.get("/v1/models")
        response.raise_for_status()
        return response.json()["data"][0]["id"]

    async def correct(self, model: str, version: int) -> int:
        """How many problems `model` (serving `version`) answers right greedily; its answers
        are appended to `heldout-answers.jsonl`: what changed between versions, problem by
        problem."""
        solutions = [group[0] for group in await self._complete(model, self.problems, 1)]
        graded = await self._grade(self.problems, solutions)
        rows = [
            {"version": version, "problem_id": p.id, "solution": text, "answer": a, "correct": r}
            for p, text, (r, a) in zip(self.problems, solutions, graded, strict=True)
        ]
        self._append(self.answers_file, rows)
        return sum(right for right, _ in graded)

    async def sample(self, model: str, version: int) -> SampledEval | None:
        """pass@k and distinct answers of `model` (serving `version`) from `passk_n` samples
        of each sampled problem (one request with n choices each, at the training sampling
        parameters), graded as the greedy answers are; the samples are appended to
        `heldout-samples.jsonl`. None when sampling is off (`passk_n` 0)."""
        n, problems = self.passk_n, self.sampled_problems
        if not n or not problems:
            return None
        groups = await self._complete(model, problems, n)
        graded = await self._grade(
            [p for p in problems for _ in range(n)], [text for group in groups for text in group]
        )
        per_problem = [graded[i : i + n] for i in range(0, len(graded), n)]
        rows = [
            {"version": version, "problem_id": problem.id, "sample": i, "solution": text}
            | {"answer": answer, "correct": right}
            for problem, group, grades in zip(problems, groups, per_problem, strict=True)
            for i, (text, (right, answer)) in enumerate(zip(group, grades, strict=True))
        ]
        self._append(self.samples_file, rows)
        return SampledEval(
            n=n,
            k=self.passk_k,
            problems=len(problems),
            pass_at_k=Metric.mean_of(
                [pass_at_k(n, sum(r for r, _ in g), self.passk_k) for g in per_problem]
            ),
            distinct=Metric.mean_of([distinct_fraction([a for _, a in g]) for g in per_problem]),
        )

    async def _complete(self, model: str, problems: list[ProblemIn], n: int) -> list[list[str]]:
        """n answers to each problem: greedy for 1, else at the training sampling parameters."""
        limit = asyncio.Semaphore(CONCURRENT_REQUESTS)
        sampling = self.greedy if n == 1 else self.sampling
        assert sampling is not None
        # the feeders' request to the generator, which forwards it to the engine as it is
        params = {"n": n, **sampling.model_dump(exclude_none=True)}

        async def one(problem: ProblemIn) -> list[str]:
            async with limit:
                response = await self.engine.post(
                    "/v1/chat/completions",
                    json={
                        "model": model,
                        "messages": [m.model_dump() for m in problem.chat(self.system_prompt)],
                        **params,
                    },
                )
                response.raise_for_status()
                choices = sorted(response.json()["choices"], key=lambda c: c["index"])
                return [c["message"]["content"] or "" for c in choices]

        return list(await asyncio.gather(*(one(p) for p in problems)))

    async def _grade(
        self, problems: list[ProblemIn], solutions: list[str]
    ) -> list[tuple[bool, str | None]]:
        """(right, extracted answer) of each solution, in batches of the verifier's limit."""
        items = [p.verify_request(s) for p, s in zip(problems, solutions, strict=True)]
        batches = [items[i : i + MAX_BATCH] for i in range(0, len(items), MAX_BATCH)]
        responses = await asyncio.gather(
            *(self.verifier.verify_batch(VerifyBatchRequest(items=batch)) for batch in batches)
        )
        return [(r.is_correct, r.extracted_answer) for resp in responses for r in resp.data]

    def _append(self, path: Path, rows: list[dict]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as out:
            out.writelines(json.dumps(row) + "\n" for row in rows)

    async def aclose(self) -> None:
        await self.engine.aclose()
