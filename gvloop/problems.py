"""Problem sets: JSONL files of `{"problem", "answer"}`, or GSM8K's `{"question", "answer"}`
whose answer ends in `#### N`. Two sets are built in, each a training file and a disjoint
held-out file drawn from the same distribution:

- `addition`: "What is a + b?" for a, b in 1..20 (400 pairs shuffled with a fixed seed, 100
  held out). The default model answers about 40% greedily and a third of its samples right:
  at the edge of its ability, where it learns within minutes on a CPU. The demo's set.
- `words`: templated arithmetic word problems (+, -, x, /, two-digit numbers). The default
  model answers about 20% and only a few percent of its samples are right: the harder case.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from pydantic import BaseModel, ValidationError

from services.schemas import ProblemIn

DATA_DIR = Path(__file__).parent / "data"


class ProblemSet(NamedTuple):
    train: Path
    heldout: Path


PROBLEM_SETS = {
    "addition": ProblemSet(DATA_DIR / "addition_train.jsonl", DATA_DIR / "addition_heldout.jsonl"),
    "words": ProblemSet(DATA_DIR / "arithmetic_train.jsonl", DATA_DIR / "arithmetic_heldout.jsonl"),
}


class ProblemFileError(ValueError):
    pass


class _Row(BaseModel):
    problem: str | None = None
    question: str | None = None
    answer: str | int | float


def parse_row(raw: str, problem_id: str | None = None) -> ProblemIn:
    """One JSONL line -> ProblemIn; GSM8K's worked answers keep only what follows `####`."""
    row = _Row.model_validate_json(raw)
    text = row.problem or row.question
    if not text:
        raise ValueError("needs a 'problem' (or GSM8K 'question') field")
    answer = str(row.answer)
    if "####" in answer:
        answer = answer.rsplit("####", 1)[1]
    return ProblemIn(id=problem_id, problem=text, reference_answer=answer.strip().replace(",", ""))


def load_problems(path: Path, limit: int | None = None) -> list[ProblemIn]:
    """Read a problem file; errors name the file and line."""
    problems = []
    with path.open(encoding="utf-8") as lines:
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                problems.append(parse_row(raw, f"{path.stem}-{number}"))
            except (ValidationError, ValueError) as exc:
                raise ProblemFileError(f"{path}:{number}: {exc}") from exc
            if limit is not None and len(problems) >= limit:
                break
    if not problems:
        raise ProblemFileError(f"{path}: no problems")
    return problems
