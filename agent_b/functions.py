"""A user's verifier function: their own idea of a right answer, where the built-in rules (a
final answer, math-aware equivalence) do not fit: a label, a format, a string, a program's
output.

Named by `GVLOOP_VERIFIER_FUNCTION` as `my_pkg.checks:score` (imported, so `my_pkg` must be
importable: installed, or on PYTHONPATH) or `/path/checks.py:score` (loaded from the file, as
verl's `custom_reward_function.path`). It is called as

    score(problem, solution, reference_answer, **fields)

where `fields` are the task row's other columns, and returns either one number in [0, 1]
(solution_score = reasoning_score = the number, is_correct = number >= the verifier's
threshold) or the three scores: a mapping (or an object with the attributes)
`solution_score`, `reasoning_score`, `is_correct`, and optionally `answer`, the final answer it
read in the solution (which distinct-answer counts use; else the rules' extracted answer). A
bool counts as 0 or 1.

Everything here runs in a rule worker process (`agent_b/workers.py`), never on the event loop:
the function may be slow, block, or crash its process without holding a request.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, JsonValue, ValidationError

from agent_b.errors import VerifierError
from services.schemas import Feedback, Score

UserFunction = Callable[..., Any]


class FunctionVerdict(Feedback):
    answer: str | None = None
    """The final answer the function read in the solution, when it says."""


class _Returned(BaseModel):
    """What a function may return, among other keys or attributes of its own."""

    model_config = ConfigDict(from_attributes=True)

    solution_score: Score
    reasoning_score: Score
    is_correct: bool
    answer: str | None = None


class FunctionFailedError(VerifierError):
    """The user's function raised, returned something that is not a verdict, ran past its
    deadline or killed its worker: the item has no score. 422: retrying the same item will not
    help, and the message names the function and what it did."""

    status_code = 422


@functools.cache
def load_function(spec: str) -> UserFunction:
    """`module:name` or `path/file.py:name` -> the function; ValueError says what is wrong."""
    target, _, name = spec.rpartition(":")
    if not target or not name.isidentifier():
        raise ValueError(
            f"verifier function {spec!r}: expected module:function or path/to/file.py:function"
        )
    if target.endswith(".py"):
        module = _module_from_file(spec, Path(target))
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ValueError(f"verifier function {spec}: cannot import {target}: {exc}") from exc
    function = getattr(module, name, None)
    if not callable(function):
        raise ValueError(f"verifier function {spec}: {target} has no function {name!r}")
    return function


def preload_function(spec: str) -> None:
    """Load the function in a worker ahead of its first call (the function itself need not
    pickle back)."""
    load_function(spec)


def _module_from_file(spec: str, path: Path) -> Any:
    if not path.is_file():
        raise ValueError(f"verifier function {spec}: no file {path}")
    module_name = f"gvloop_user_{path.stem}"
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    assert loader_spec is not None and loader_spec.loader is not None
    module = importlib.util.module_from_spec(loader_spec)
    # registered before running it, so dataclasses and pickling inside it find their module
    sys.modules[module_name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as exc:
        raise ValueError(
            f"verifier function {spec}: {path} failed to load: {type(exc).__name__}: {exc}"
        ) from exc
    return module


def call_function(
    spec: str,
    problem: str | None,
    solution: str,
    reference_answer: str | None,
    fields: dict[str, JsonValue],
    threshold: float,
) -> FunctionVerdict:
    """The user's function on one item, its answer turned into the three scores."""
    function = load_function(spec)
    try:
        result = function(problem, solution, reference_answer, **fields)
    except (Exception, SystemExit) as exc:
        # the exception itself may not pickle back to the service: send its text
        raise FunctionFailedError(
            f"the verifier function {spec} raised {type(exc).__name__}: {exc}"
        ) from None
    return as_verdict(spec, result, threshold)


def as_verdict(spec: str, result: object, threshold: float) -> FunctionVerdict:
    """One number in [0, 1], or the three scores; anything else is a FunctionFailedError."""
    if isinstance(result, bool | int | float):
        score = float(result)
        if math.isfinite(score) and 0.0 <= score <= 1.0:
            return FunctionVerdict(
                solution_score=score, reasoning_score=score, is_correct=score >= threshold
            )
    else:
        try:
            return FunctionVerdict(**_Returned.model_validate(result).model_dump())
        except ValidationError:
            pass
    raise FunctionFailedError(
        f"the verifier function {spec} returned {_shown(result)}: expected a number in [0, 1] "
        "or solution_score and reasoning_score in [0, 1] and is_correct (a mapping or an object)"
    )


def _shown(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:120]}{'...' if len(text) > 120 else ''}"
