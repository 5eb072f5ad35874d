"""A verifier function's answer turned into the three scores, and the ways a spec can be
wrong, each with a message that says which."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent_b.functions import FunctionFailedError, as_verdict, call_function, load_function
from tests.utils.checkers import write_checks


@dataclass
class Scores:
    solution_score: float
    reasoning_score: float
    is_correct: bool


@pytest.mark.parametrize(
    ("returned", "expected"),
    [
        (0.75, (0.75, 0.75, True)),
        (0.25, (0.25, 0.25, False)),
        (True, (1.0, 1.0, True)),
        (0, (0.0, 0.0, False)),
        ({"solution_score": 1, "reasoning_score": 0.5, "is_correct": True}, (1.0, 0.5, True)),
        (Scores(0.0, 1.0, False), (0.0, 1.0, False)),  # an object with the attributes
    ],
)
def test_both_shapes(returned: object, expected: tuple[float, float, bool]) -> None:
    verdict = as_verdict("m:f", returned, threshold=0.5)
    assert (verdict.solution_score, verdict.reasoning_score, verdict.is_correct) == expected


@pytest.mark.parametrize(
    "returned",
    [
        1.5,
        -0.1,
        math.nan,
        math.inf,
        None,
        "1.0",
        [1.0],
        {"solution_score": 1.0},
        Scores(2, 0, True),
    ],
)
def test_anything_else_is_an_error_naming_function_and_value(returned: object) -> None:
    with pytest.raises(FunctionFailedError, match=r"the verifier function m:f returned \w+ "):
        as_verdict("m:f", returned, threshold=0.5)


def test_a_raising_function_is_named_with_its_exception(tmp_path: Path) -> None:
    spec = f"{write_checks(tmp_path)}:raises"
    with pytest.raises(FunctionFailedError) as caught:
        call_function(spec, "p", "boom", None, {}, 0.5)
    assert (
        str(caught.value)
        == f"the verifier function {spec} raised KeyError: 'no grader for this one'"
    )
    assert caught.value.status_code == 422


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon", "expected module:function"),
        ("mod:not an identifier", "expected module:function"),
        ("{dir}/missing.py:f", "no file"),
        ("{dir}/broken.py:f", "broken.py failed to load: ZeroDivisionError"),
        ("{dir}/checks.py:missing", "has no function 'missing'"),
        ("no_such_module_xyz:f", "cannot import no_such_module_xyz"),
        ("json:loads", None),  # a module on the path works as well as a file
    ],
)
def test_load_function(tmp_path: Path, spec: str, message: str | None) -> None:
    write_checks(tmp_path)
    (tmp_path / "broken.py").write_text("1 / 0\n")
    spec = spec.format(dir=tmp_path)
    if message is None:
        assert callable(load_function(spec))
        return
    with pytest.raises(ValueError, match=message):
        load_function(spec)
