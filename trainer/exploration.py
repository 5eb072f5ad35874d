"""Outcome-based exploration: a bonus for each sample by how rarely its final answer has been
produced for its problem (Song, Kempe, Munos: outcome-based exploration for LLM reasoning).
Pure functions of the answers and the counts; the counts themselves live in Redis
(`trainer.answer_counts`).

Per sample i of problem x_i with final answer a_i, G_i the other samples of x_i in the batch
that have an answer too, k = |G_i| + 1:

    count   b_i = min(1, sqrt(1 / N_i))      N_i = N(x_i, a_i) before the step, plus the
                                             batch's samples of (x_i, a_i), this one included
            baseline none:      B_i = b_i
            baseline mean:      B_i = b_i - mean_{j in G_i} b_j      (0 when G_i is empty)
            baseline constant:  B_i = b_i - b0
    batch   B_i = -(1/k) * #{j in G_i : a_j = a_i}

So a never-seen answer has N = 1 and the full bonus 1. A sample without an extracted answer
takes no part: its B is 0, it is in no group and it is never counted (not finding an answer is
no outcome to explore). `trainer.loss` says how B enters the loss.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from typing import Literal

from services.schemas import Sample

Mode = Literal["none", "count", "batch"]
Baseline = Literal["none", "mean", "constant"]
Outcome = tuple[str, str]  # (problem key, answer key)
# Redis keeps a small hash compact (listpack) while its values are at most 64 bytes
MAX_ANSWER_BYTES = 64


def problem_key(problem: str) -> str:
    """The problem's text digest: a problem posted without an id gets a new id each time, and
    its counts must add up all the same."""
    return hashlib.sha1(problem.encode()).hexdigest()[:16]


def answer_key(answer: str | None) -> str | None:
    """The answer as counted: stripped, a digest when over 64 bytes; None when there is none."""
    answer = (answer or "").strip()
    if not answer:
        return None
    if len(answer.encode()) > MAX_ANSWER_BYTES:
        return "sha1:" + hashlib.sha1(answer.encode()).hexdigest()
    return answer


def outcomes(samples: list[Sample]) -> list[Outcome | None]:
    """Each sample's (problem, answer) key, None for a sample without an answer."""
    keys: list[Outcome | None] = []
    for s in samples:
        answer = answer_key(s.extracted_answer)
        keys.append(None if answer is None else (problem_key(s.problem), answer))
    return keys


def count_bonus(n: int) -> float:
    """min(1, sqrt(1 / N)) for an answer seen N >= 1 times, this time included."""
    assert n >= 1, n
    return min(1.0, math.sqrt(1.0 / n))


def compute_bonuses(
    keys: list[Outcome | None],
    mode: Mode,
    baseline: Baseline = "none",
    b0: float = 0.5,
    seen: list[int] | None = None,
) -> list[float]:
    """B_i of each sample (formulas in the module docstring). `seen[i]`: N(x_i, a_i) before
    this batch (count only; unused where keys[i] is None)."""
    if mode == "none":
        return [0.0] * len(keys)
    in_batch = Counter(k for k in keys if k is not None)
    groups: dict[str, list[int]] = defaultdict(list)  # problem -> its samples with an answer
    for i, k in enumerate(keys):
        if k is not None:
            groups[k[0]].append(i)
    bonuses = [0.0] * len(keys)
    if mode == "batch":
        for i, k in enumerate(keys):
            if k is not None:
                bonuses[i] = -(in_batch[k] - 1) / len(groups[k[0]])
        return bonuses
    assert seen is not None and len(seen) == len(keys)
    raw = [0.0 if k is None else count_bonus(seen[i] + in_batch[k]) for i, k in enumerate(keys)]
    for i, k in enumerate(keys):
        if k is None:
            continue
        if baseline == "none":
            bonuses[i] = raw[i]
        elif baseline == "constant":
            bonuses[i] = raw[i] - b0
        else:
            others = [raw[j] for j in groups[k[0]] if j != i]
            bonuses[i] = raw[i] - sum(others) / len(others) if others else 0.0
    return bonuses
