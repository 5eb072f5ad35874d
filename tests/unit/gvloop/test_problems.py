"""Problem files: our JSONL and GSM8K's, with errors that name the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from gvloop.problems import PROBLEM_SETS, ProblemFileError, load_problems


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "set.jsonl"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", sorted(PROBLEM_SETS))
def test_builtin_sets_load_and_do_not_overlap(name: str) -> None:
    train, heldout = (load_problems(path) for path in PROBLEM_SETS[name])
    assert len(train) >= 300 and len(heldout) >= 100
    assert not {p.problem for p in train} & {p.problem for p in heldout}
    assert all(p.reference_answer and p.reference_answer.lstrip("-").isdigit() for p in heldout)


@pytest.mark.parametrize(
    ("line", "problem", "answer"),
    [
        ('{"problem": "1+1?", "answer": "2"}', "1+1?", "2"),
        ('{"problem": "1+1?", "answer": 2}', "1+1?", "2"),  # numbers are fine
        # GSM8K: worked solution, final answer after ####, thousands separators dropped
        ('{"question": "Q?", "answer": "So 1,000 + 200\\n#### 1,200"}', "Q?", "1200"),
    ],
)
def test_formats(tmp_path: Path, line: str, problem: str, answer: str) -> None:
    [loaded] = load_problems(write(tmp_path, line + "\n\n"))
    assert (loaded.problem, loaded.reference_answer, loaded.id) == (problem, answer, "set-1")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"answer": "2"}\n', "set.jsonl:1: needs a 'problem'"),
        ('{"problem": "ok", "answer": "1"}\nnot json\n', "set.jsonl:2:"),
        ("\n", "no problems"),
    ],
)
def test_errors_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ProblemFileError, match=message):
        load_problems(write(tmp_path, text))


def test_limit(tmp_path: Path) -> None:
    assert len(load_problems(PROBLEM_SETS["words"].train, limit=7)) == 7
