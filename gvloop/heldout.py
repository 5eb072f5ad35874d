"""The held-out set of a training run, answered by the served weights and graded by agent B:
each version's greedy accuracy (pass@1), its pass@k and distinct answers from n samples per
problem, the generation-verification gap of its samples (opt-in), and its answers kept problem
by problem.

The problems go straight to the engine (never through the generator, so never enqueued and never
trained on) and are graded by the verifier as the loop's samples are: the rules against their
reference answers, or the user's verifier function. The greedy answers go to
`heldout-answers.jsonl`, the samples to `heldout-samples.jsonl` (one row per sample, `sample`
its index among the problem's n), so that either file alone means one thing.

The gap (`gap_threshold` set): each sample is also put to agent B's judge without its
reference answer (method `model`), and the samples it scores at least the threshold are the
kept ones (`gvloop/gap.py`); a sample's row then carries the judge's `judge_p_correct` and
`judge_version`."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

import httpx

from gvloop.gap import VerifierGap, compute_gap, reference_gap
from gvloop.metrics import Metric, distinct_fraction, pass_at_k
from services.clients import VerifierClient
from services.schemas import (
    MAX_BATCH,
    ProblemIn,
    SamplingParams,
    VerifyBatchRequest,
    VerifyRequest,
    VerifyResponse,
)

CONCURRENT_REQUESTS = 16


@dataclass(frozen=True)
class SampledEval:
    """One version's held-out samples: n per problem on the first `problems` problems."""

    n: int
    k: int
    problems: int
    pass_at_k: Metric
    distinct: Metric
    gap_reference: VerifierGap | None = None
    """The reference as a verifier: the gap's upper bound (with `gap_judge`)."""
    gap_judge: VerifierGap | None = None
    """Agent B's judge without the reference answer (None: the gap is not measured)."""


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
        gap_threshold: float | None = None,
    ) -> None:
        """`sampling`: the training samples' parameters, which the held-out samples are drawn
        with, `passk_n` per problem (0: none) on the first `passk_problems` problems (None:
        all), for pass@`passk_k`; `gap_threshold`: the judge's p(correct) at which a sample
        is kept, for the generation-verification gap (None: not measured)."""
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
        self.gap_threshold = gap_threshold

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
        parameters), graded as the greedy answers are, and with `gap_threshold` judged without
        their reference answers for the gap; the samples are appended to
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
        gap_judge = gap_reference = None
        if self.gap_threshold is not None:
            judged = await self._judge(problems, groups)
            for row, verdict in zip(rows, judged, strict=True):
                row["judge_p_correct"] = verdict.judge_p_correct
                row["judge_version"] = verdict.judge_version
            right = [row["correct"] for row in rows]
            gap_judge = self._judge_gap(right, judged, self.gap_threshold)
            gap_reference = reference_gap(right)
        self._append(self.samples_file, rows)
        return SampledEval(
            n=n,
            k=self.passk_k,
            problems=len(problems),
            pass_at_k=Metric.mean_of(
                [pass_at_k(n, sum(r for r, _ in g), self.passk_k) for g in per_problem]
            ),
            distinct=Metric.mean_of([distinct_fraction([a for _, a in g]) for g in per_problem]),
            gap_reference=gap_reference,
            gap_judge=gap_judge,
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
        """(right, extracted answer) of each solution."""
        items = [p.verify_request(s) for p, s in zip(problems, solutions, strict=True)]
        return [(r.is_correct, r.extracted_answer) for r in await self._verify(items)]

    async def _judge(
        self, problems: list[ProblemIn], groups: list[list[str]]
    ) -> list[VerifyResponse]:
        """The judge's verdict on each sample without its reference answer (method model: a
        reference would be ignored, and is not sent)."""
        return await self._verify(
            [
                VerifyRequest(problem=problem.problem, solution=text, method="model")
                for problem, group in zip(problems, groups, strict=True)
                for text in group
            ]
        )

    @staticmethod
    def _judge_gap(
        right: list[bool], judged: list[VerifyResponse], threshold: float
    ) -> VerifierGap:
        """The judge's gap on the samples, with the weight versions it answered with."""
        scores: list[float] = []
        for verdict in judged:
            assert verdict.judge_p_correct is not None, "method model always asks the judge"
            scores.append(verdict.judge_p_correct)
        versions = sorted({v.judge_version for v in judged if v.judge_version is not None})
        return compute_gap(right, scores, threshold, judged[0].model, versions or None)

    async def _verify(self, items: list[VerifyRequest]) -> list[VerifyResponse]:
        """The verifier's verdicts, in batches of its limit."""
        batches = [items[i : i + MAX_BATCH] for i in range(0, len(items), MAX_BATCH)]
        responses = await asyncio.gather(
            *(self.verifier.verify_batch(VerifyBatchRequest(items=batch)) for batch in batches)
        )
        return [r for response in responses for r in response.data]

    def _append(self, path: Path, rows: list[dict]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as out:
            out.writelines(json.dumps(row) + "\n" for row in rows)

    async def aclose(self) -> None:
        await self.engine.aclose()
