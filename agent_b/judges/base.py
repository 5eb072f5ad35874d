"""What every judge backend shares: the `Judge` interface, the question, the prompt, and
p(Yes) from the log-probabilities of the yes/no token variants."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

Question = Literal["correct", "reasoning"]

SYSTEM_PROMPT = "You are a strict math teacher. You check students' solutions step by step."
QUESTIONS: dict[Question, str] = {
    "correct": "Is the final answer of this solution correct? Answer Yes or No.",
    "reasoning": (
        "Ignore the final answer. Is every step of this reasoning valid: does each step follow "
        "from the problem and the steps before it, with every calculation right? Answer Yes or No."
    ),
}
YES_WORDS = ("Yes", "yes", "YES")
NO_WORDS = ("No", "no", "NO")
# Prompts keep under max_prompt_tokens by characters (about 3 per token in math text) so both
# backends cut the same way without a tokenizer; the local judge then enforces the token bound.
CHARS_PER_TOKEN = 3


@dataclass(frozen=True)
class JudgeQuery:
    problem: str
    solution: str
    question: Question


def _shorten(text: str, max_chars: int, keep_tail: bool) -> str:
    if len(text) <= max_chars:
        return text
    if not keep_tail:
        return text[:max_chars] + " [...]"
    half = max_chars // 2
    return f"{text[:half]}\n[...]\n{text[-half:]}"


def judge_messages(query: JudgeQuery, max_prompt_tokens: int) -> list[dict[str, str]]:
    """Chat messages asking the question; long texts lose their middle (a solution's answer
    sits at its end), and the problem never takes more than a third of the budget."""
    budget = max(200, max_prompt_tokens * CHARS_PER_TOKEN - 400)  # less the template, question
    problem = _shorten(query.problem, budget // 3, keep_tail=False)
    solution = _shorten(query.solution, budget - len(problem), keep_tail=True)
    user = f"Problem:\n{problem}\n\nSolution:\n{solution}\n\n{QUESTIONS[query.question]}"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def _logsumexp(values: list[float]) -> float:
    if not values:
        return -math.inf
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def p_yes_from_logprobs(yes: list[float], no: list[float]) -> float:
    """p(Yes) / (p(Yes) + p(No)) from the log-probabilities of each word's variants; 0.5 when
    neither word is among them (the judge was about to say something else)."""
    log_yes, log_no = _logsumexp(yes), _logsumexp(no)
    if log_yes == log_no == -math.inf:
        return 0.5
    if log_no == -math.inf:
        return 1.0
    return 1 / (1 + math.exp(min(log_no - log_yes, 700.0)))


class Judge(ABC):
    """What the verifier needs from a judge backend."""

    name: str
    ready: bool = False

    @abstractmethod
    async def load(self) -> None:
        """Load the model or reach the server; sets `ready`."""

    @abstractmethod
    async def p_yes(self, query: JudgeQuery) -> float:
        """p(Yes) for one question; concurrent calls are batched by the backend."""

    async def weight_version(self) -> int | None:
        """The weight version the judge answers with now, when its server reports one (a gvloop
        engine, whose hot swaps change it); None for a judge that reports none."""
        return None

    @abstractmethod
    async def aclose(self) -> None:
        """Release the model, the server connection, background tasks."""
