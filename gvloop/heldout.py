"""The held-out set of a training run, answered greedily by the served weights and graded by
agent B: each version's accuracy, and its answers kept problem by problem.

The problems go straight to the engine (never through the generator, so never enqueued and never
trained on) and are graded by the verifier as the loop's samples are: the rules against their
reference answers, or the user's verifier function."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx

from services.clients import VerifierClient
from services.schemas import ProblemIn, SamplingParams, VerifyBatchRequest

CONCURRENT_REQUESTS = 16


class HeldOut:
    def __init__(
        self,
        problems: list[ProblemIn],
        engine_url: str,
        verifier: VerifierClient,
        out_dir: Path,
        system_prompt: str | None,
        max_tokens: int,
    ) -> None:
        self.problems = problems
        self.engine = httpx.AsyncClient(base_url=engine_url, timeout=300)
        self.verifier = verifier
        self.answers_file = out_dir / "heldout-answers.jsonl"
        self.system_prompt = system_prompt
        self.sampling = SamplingParams(temperature=0.0, max_tokens=max_tokens)

    async def served_model(self) -> str:
        response = await self.engine.get("/v1/models")
        response.raise_for_status()
        return response.json()["data"][0]["id"]

    async def correct(self, model: str, version: int) -> int:
        """How many problems `model` (serving `version`) answers right; its answers are
        appended to `heldout-answers.jsonl`: what changed between versions, problem by
        problem."""
        solutions = await self._complete(model)
        graded = await self._grade(solutions)
        self.answers_file.parent.mkdir(parents=True, exist_ok=True)
        with self.answers_file.open("a", encoding="utf-8") as out:
            for problem, text, (right, answer) in zip(
                self.problems, solutions, graded, strict=True
            ):
                row = {"version": version, "problem_id": problem.id, "solution": text}
                out.write(json.dumps(row | {"answer": answer, "correct": right}) + "\n")
        return sum(right for right, _ in graded)

    async def _complete(self, model: str) -> list[str]:
        limit = asyncio.Semaphore(CONCURRENT_REQUESTS)

        async def one(problem: ProblemIn) -> str:
            async with limit:
                response = await self.engine.post(
                    "/v1/chat/completions",
                    json={
                        "model": model,
                        "messages": [m.model_dump() for m in problem.chat(self.system_prompt)],
                        **self.sampling.model_dump(exclude_none=True),
                    },
                )
                response.raise_for_status()
                return response.json()["choices"][0]["message"]["content"] or ""

        return await asyncio.gather(*(one(p) for p in self.problems))

    async def _grade(self, solutions: list[str]) -> list[tuple[bool, str | None]]:
        request = VerifyBatchRequest(
            items=[p.verify_request(s) for p, s in zip(self.problems, solutions, strict=True)]
        )
        response = await self.verifier.verify_batch(request)
        return [(r.is_correct, r.extracted_answer) for r in response.data]

    async def aclose(self) -> None:
        await self.engine.aclose()
