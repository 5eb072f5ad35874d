"""Verifier functions as a user writes them, in a file of their own (a temporary directory),
for the tests of `GVLOOP_VERIFIER_FUNCTION`."""

from __future__ import annotations

from pathlib import Path

CHECKS = '''
import time


def exact(problem, solution, reference_answer, **fields):
    """One number: 1 when the solution is the reference, case and spaces aside."""
    return float(solution.strip().lower() == reference_answer.strip().lower())


def three(problem, solution, reference_answer, **fields):
    """The three scores, from the row's own fields: the label and how sure a label must be."""
    right = fields["label"] in solution
    return {
        "solution_score": float(right),
        "reasoning_score": fields["weight"],
        "is_correct": right,
        "answer": fields["label"] if right else None,
        "note": "keys of its own are allowed",
    }


def by_field(problem, solution, reference_answer, **fields):
    """Whatever the solution: the row says whether it counts as right."""
    return float(fields["right"])


def raises(problem, solution, reference_answer, **fields):
    if "boom" in solution:
        raise KeyError("no grader for this one")
    return 1.0


def hangs(problem, solution, reference_answer, **fields):
    if "slow" in solution:
        time.sleep(3600)
    return 1.0


def ill_typed(problem, solution, reference_answer, **fields):
    if "dict" in solution:
        return {"score": 2.0}
    return 1.5 if "big" in solution else 1.0
'''


def write_checks(directory: Path) -> Path:
    path = directory / "checks.py"
    path.write_text(CHECKS)
    return path
