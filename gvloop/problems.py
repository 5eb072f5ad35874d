"""Problem sets: a user's data files, or one of the two built in, read through `datasets`.

A file is JSON Lines, JSON, Parquet or CSV (by its suffix), a directory written by `datasets`'
`save_to_disk`, or a hub dataset id where the network allows. Each row gives a prompt, under
`prompt_key` (default: the first of `problem`, `question`, `prompt`), either text or a chat
conversation (`[{"role", "content"}]`); a reference answer under `answer_key` (default
`answer`; GSM8K's worked answers ending in `#### N` keep N); and other columns, which travel
with the problem to a verifier function as keywords.

Two sets are built in, each a training file and a disjoint held-out file drawn from the same
distribution:

- `addition`: "What is a + b?" for a, b in 1..20 (400 pairs shuffled with a fixed seed, 100
  held out). The default model answers about 40% greedily and a third of its samples right:
  at the edge of its ability, where it learns within minutes on a CPU. The demo's set.
- `words`: templated arithmetic word problems (+, -, x, /, two-digit numbers). The default
  model answers about 20% and only a few percent of its samples are right: the harder case.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from pydantic import BaseModel, ValidationError

from services.schemas import ChatMessage, ProblemIn

if TYPE_CHECKING:
    from datasets import Dataset

DATA_DIR = Path(__file__).parent / "data"
PROMPT_KEYS = ("problem", "question", "prompt")
FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


class ProblemSet(NamedTuple):
    train: Path
    heldout: Path


PROBLEM_SETS = {
    "addition": ProblemSet(DATA_DIR / "addition_train.jsonl", DATA_DIR / "addition_heldout.jsonl"),
    "words": ProblemSet(DATA_DIR / "arithmetic_train.jsonl", DATA_DIR / "arithmetic_heldout.jsonl"),
}


class ProblemFileError(ValueError):
    """A file that cannot be a problem set; the message names the file, and the row and field
    where one is at fault."""


class TaskKeys(BaseModel):
    """Which columns hold what, as the peers map them (verl's `prompt_key`, OpenRLHF's
    `input_key`/`label_key`)."""

    prompt: str | None = None
    """The prompt's column; None: the first of problem, question, prompt."""
    answer: str = "answer"
    """The reference answer's column."""


def load_problems(
    source: Path | str, *, keys: TaskKeys | None = None, limit: int | None = None
) -> list[ProblemIn]:
    """Read a problem set (the first `limit` rows); errors name the file, row and field."""
    keys = keys or TaskKeys()
    rows = _open(source)
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    prompt_key = keys.prompt or next((k for k in PROMPT_KEYS if k in rows.column_names), None)
    for key, what in ((prompt_key, "prompt"), (keys.answer, "answer")):
        if key is None or key not in rows.column_names:
            named = f"no column {key!r}" if key else f"no column {' or '.join(PROMPT_KEYS)}"
            raise ProblemFileError(
                f"{source}: {named} for the {what} (choose one with --{what}-key); "
                f"its columns: {', '.join(rows.column_names)}"
            )
    assert prompt_key is not None
    stem = Path(str(source).rstrip("/")).stem
    problems = []
    for number, row in enumerate(rows, start=1):
        try:
            problems.append(_problem(row, prompt_key, keys.answer, f"{stem}-{number}"))
        except _FieldError as exc:
            raise ProblemFileError(f"{source}: row {number}: field {exc}") from None
    return problems


def overlap(train: list[ProblemIn], heldout: list[ProblemIn]) -> int:
    """Held-out problems that are also training problems (same prompt)."""
    seen = {_prompt_text(p) for p in train}
    return sum(_prompt_text(p) in seen for p in heldout)


def _prompt_text(problem: ProblemIn) -> str:
    if problem.messages is None:
        return problem.problem
    return json.dumps([m.model_dump() for m in problem.messages])


def _open(source: Path | str) -> Dataset:
    """The rows of a file, a save_to_disk directory or a hub dataset (its train split)."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    path = Path(source)
    try:
        if path.is_dir():
            loaded = datasets.load_from_disk(str(path))
        elif path.is_file():
            if path.suffix not in FORMATS:
                raise ProblemFileError(
                    f"{path}: unknown format {path.suffix!r}: use {', '.join(FORMATS)}, or a "
                    "directory written by datasets' save_to_disk"
                )
            if path.stat().st_size == 0:
                raise ProblemFileError(f"{path}: empty file")
            loaded = datasets.load_dataset(FORMATS[path.suffix], data_files=str(path))
        elif path.suffix in FORMATS or str(source).startswith((".", "/", "~")):
            raise ProblemFileError(f"{path}: no such file or directory")
        else:
            loaded = datasets.load_dataset(str(source))
    except ProblemFileError:
        raise
    except Exception as exc:  # datasets raises many kinds, each with a message worth showing
        raise ProblemFileError(f"{source}: cannot read it: {type(exc).__name__}: {exc}") from exc
    if isinstance(loaded, datasets.DatasetDict):
        split = "train" if "train" in loaded or len(loaded) != 1 else next(iter(loaded))
        if split not in loaded:
            raise ProblemFileError(f"{source}: no train split (splits: {', '.join(loaded)})")
        loaded = loaded[split]
    if len(loaded) == 0:
        raise ProblemFileError(f"{source}: no rows")
    return loaded


class _FieldError(ValueError):
    pass


def _problem(row: dict[str, Any], prompt_key: str, answer_key: str, problem_id: str) -> ProblemIn:
    prompt, answer = row[prompt_key], row[answer_key]
    messages = _messages(prompt, prompt_key) if isinstance(prompt, list) else None
    if messages is not None:
        users = [m.content for m in messages if m.role == "user"]
        if not users:
            raise _FieldError(f"{prompt_key!r}: a conversation with no user message")
        prompt = users[-1]
    if not isinstance(prompt, str) or not prompt.strip():
        raise _FieldError(f"{prompt_key!r}: expected text or a chat message list, got {prompt!r}")
    if answer is None or isinstance(answer, list | dict) or str(answer).strip() == "":
        raise _FieldError(f"{answer_key!r}: expected a non-empty answer, got {answer!r}")
    answer = str(answer)
    if "####" in answer:
        answer = answer.rsplit("####", 1)[1].strip().replace(",", "")
    others = {k: v for k, v in row.items() if k not in (prompt_key, answer_key)}
    try:
        return ProblemIn(
            id=problem_id,
            problem=prompt,
            reference_answer=answer.strip(),
            messages=messages,
            # JSON-able as the wire carries them (a Parquet date becomes its text)
            fields=json.loads(json.dumps(others, default=str)),
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise _FieldError(f"{where!r}: {error['msg']}") from None


def _messages(prompt: list[Any], prompt_key: str) -> list[ChatMessage]:
    try:
        return [ChatMessage.model_validate(m) for m in prompt]
    except ValidationError as exc:
        raise _FieldError(
            f"{prompt_key!r}: a chat message list needs role (system, user or assistant) and "
            f"content in each message: {exc.errors()[0]['msg']}"
        ) from None
