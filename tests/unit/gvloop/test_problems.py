"""Problem sets through `datasets`: every file format, the key mapping as the peers do it, and
bad files refused with one line that names the file, the row and the field."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from gvloop.problems import PROBLEM_SETS, ProblemFileError, TaskKeys, load_problems, overlap

ROWS = [
    {"question": "Q1?", "answer": "So 1,000 + 200\n#### 1,200", "level": 2},
    {"question": "Q2?", "answer": "7", "level": 5},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize("name", sorted(PROBLEM_SETS))
def test_builtin_sets_load_and_do_not_overlap(name: str) -> None:
    train, heldout = (load_problems(path) for path in PROBLEM_SETS[name])
    assert len(train) >= 300 and len(heldout) >= 100
    assert overlap(train, heldout) == 0
    assert all(p.reference_answer and p.reference_answer.lstrip("-").isdigit() for p in heldout)


@pytest.mark.parametrize("form", ["jsonl", "json", "parquet", "csv", "save_to_disk"])
def test_every_format_reads_the_same_problems(tmp_path: Path, form: str) -> None:
    rows = datasets.Dataset.from_list(ROWS)
    path = tmp_path / f"set.{form}"
    if form == "jsonl":
        write_jsonl(path, ROWS)
    elif form == "json":
        path.write_text(json.dumps(ROWS))  # one array
    elif form == "parquet":
        rows.to_parquet(str(path))
    elif form == "csv":
        rows.to_csv(str(path), index=False)
    else:
        rows.save_to_disk(str(path))
    problems = load_problems(path)
    # GSM8K's worked answer keeps what follows ####; the other columns travel as fields
    assert [(p.id, p.problem, p.reference_answer, p.fields) for p in problems] == [
        ("set-1", "Q1?", "1200", {"level": 2}),
        ("set-2", "Q2?", "7", {"level": 5}),
    ]


@pytest.mark.parametrize(
    ("row", "keys", "problem", "answer"),
    [
        ({"problem": "P", "question": "Q", "answer": 3}, TaskKeys(), "P", "3"),  # problem first
        ({"question": "Q", "prompt": "R", "answer": 3.5}, TaskKeys(), "Q", "3.5"),
        ({"prompt": "R", "answer": "x"}, TaskKeys(), "R", "x"),
        ({"text": "T", "label": "pos"}, TaskKeys(prompt="text", answer="label"), "T", "pos"),
    ],
)
def test_key_mapping(tmp_path: Path, row: dict, keys: TaskKeys, problem: str, answer: str) -> None:
    [loaded] = load_problems(write_jsonl(tmp_path / "set.jsonl", [row]), keys=keys)
    assert (loaded.problem, loaded.reference_answer) == (problem, answer)


def test_a_prompt_may_be_a_conversation(tmp_path: Path) -> None:
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    [loaded] = load_problems(write_jsonl(tmp_path / "chat.jsonl", [{"prompt": chat, "answer": 1}]))
    assert loaded.problem == "Hi?"  # what the verifier reads: the last user message
    assert [m.model_dump() for m in loaded.chat("ignored: it has its own")] == chat
    plain = load_problems(write_jsonl(tmp_path / "plain.jsonl", [{"prompt": "Hi?", "answer": 1}]))
    assert [m.role for m in plain[0].chat("Be brief.")] == ["system", "user"]


@pytest.mark.parametrize(
    ("content", "keys", "message"),
    [
        ("", TaskKeys(), "set.jsonl: empty file"),
        ('{"problem": "P"}\n', TaskKeys(), "set.jsonl: no column 'answer' for the answer"),
        ('{"text": "P", "answer": 1}\n', TaskKeys(), "no column problem or question or prompt"),
        ('{"problem": "P", "answer": 1}\n', TaskKeys(prompt="text"), "no column 'text'"),
        (
            '{"problem": "P", "answer": 1}\n{"problem": "", "answer": 2}\n',
            TaskKeys(),
            "set.jsonl: row 2: field 'problem': expected text",
        ),
        (
            '{"problem": "P", "answer": 1}\n{"problem": "Q", "answer": null}\n',
            TaskKeys(),
            "set.jsonl: row 2: field 'answer': expected a non-empty answer",
        ),
        (
            '{"prompt": [{"role": "robot", "content": "x"}], "answer": 1}\n',
            TaskKeys(),
            "row 1: field 'prompt': a chat message list needs role",
        ),
        ('{"problem": "P", "answer": 1}\nnot json\n', TaskKeys(), "set.jsonl: cannot read it"),
    ],
)
def test_bad_files_name_the_file_row_and_field(
    tmp_path: Path, content: str, keys: TaskKeys, message: str
) -> None:
    path = tmp_path / "set.jsonl"
    path.write_text(content)
    with pytest.raises(ProblemFileError, match=message.replace("(", r"\(")):
        load_problems(path, keys=keys)


@pytest.mark.parametrize(
    ("name", "message"), [("missing.jsonl", "no such file"), ("set.txt", "unknown format '.txt'")]
)
def test_missing_files_and_unknown_formats(tmp_path: Path, name: str, message: str) -> None:
    (tmp_path / "set.txt").write_text("x")
    with pytest.raises(ProblemFileError, match=message):
        load_problems(tmp_path / name)


def test_overlap_counts_heldout_problems_seen_in_training(tmp_path: Path) -> None:
    train = load_problems(write_jsonl(tmp_path / "train.jsonl", ROWS))
    heldout = load_problems(
        write_jsonl(tmp_path / "heldout.jsonl", [ROWS[1], {**ROWS[0], "question": "new"}])
    )
    assert overlap(train, heldout) == 1


def test_limit() -> None:
    assert len(load_problems(PROBLEM_SETS["words"].train, limit=7)) == 7
