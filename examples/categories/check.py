"""The word-category task's checker: right when the first category the answer names is the
word's own; its steps are sound (reasoning_score 1) when it names no other category.

gvloop calls it as score(problem, solution, reference_answer, **fields), with the row's other
columns as fields (here `word`).
"""

import re

NAMED = re.compile(r"\b(animal|fruit|vehicle|instrument)s?\b", re.IGNORECASE)


def score(problem: str, solution: str, reference_answer: str, **fields: object) -> dict:
    named = [match.group(1).lower() for match in NAMED.finditer(solution)]
    right = bool(named) and named[0] == reference_answer
    return {
        "solution_score": float(right),
        # "instrument, or maybe an animal" is right but hedged: half the reward of a clean answer
        "reasoning_score": float(right and len(set(named)) == 1),
        "is_correct": right,
        "answer": named[0] if named else None,
    }
