"""`gvloop up --train/--heldout`: what is wrong with a task stops it with exit 2 and one line
naming the file, row and field, before anything starts; the example task is well formed."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent_b.functions import call_function
from gvloop.cli import app
from gvloop.demo import DemoConfig
from gvloop.problems import TaskKeys

EXAMPLE = Path(__file__).parents[3] / "examples" / "categories"


def up(*args: str, data_dir: Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["up", *args], env={"GVLOOP_DATA_DIR": str(data_dir)})
    return result.exit_code, result.output


@pytest.fixture
def task(tmp_path: Path) -> tuple[Path, Path]:
    train, heldout = tmp_path / "train.jsonl", tmp_path / "heldout.jsonl"
    train.write_text('{"problem": "A?", "answer": 1}\n{"problem": "B?", "answer": 2}\n')
    heldout.write_text('{"problem": "C?", "answer": 3}\n{"problem": "D?"}\n')
    return train, heldout


def test_a_bad_row_stops_up_before_anything_starts(tmp_path: Path, task: tuple[Path, Path]) -> None:
    train, heldout = task
    code, output = up("--train", str(train), "--heldout", str(heldout), data_dir=tmp_path / "d")
    assert code == 2
    assert f"{heldout}: row 2: field 'answer'" in output or f"{heldout}: no column" in output
    assert not (tmp_path / "d" / "runs").exists()  # nothing started, no run directory


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--train", "{train}"], "--train and --heldout go together"),
        (["--demo", "--train", "{train}", "--heldout", "{train}"], "choose one"),
        (["--resume", "{dir}", "--train", "{train}", "--heldout", "{train}"], "choose one"),
        (["--resume", "{dir}"], "not a --train run's directory (no run.json)"),
        (["--train", "{dir}/none.jsonl", "--heldout", "{train}"], "none.jsonl: no such file"),
        (
            ["--train", "{train}", "--heldout", "{train}", "--prompt-key", "text"],
            "no column 'text' for the prompt",
        ),
        (
            ["--train", "{train}", "--heldout", "{train}", "--verifier-function", "{dir}/c.py:f"],
            "c.py:f: no file",
        ),
        (["--demo", "--passk-n", "2"], "passk_n (2) must be at least passk_k (4)"),
        (["--demo", "--passk-n", "0", "--gap-threshold", "0.5"], "gap_threshold needs held-out"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    tmp_path: Path, task: tuple[Path, Path], args: list[str], message: str
) -> None:
    train, _ = task
    filled = [a.format(train=train, dir=tmp_path) for a in args]
    code, output = up(*filled, data_dir=tmp_path / "d")
    assert code == 2
    assert message in output and len(output.strip().splitlines()) == 1, output


def test_a_heldout_row_seen_in_training_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [{"problem": f"P{i}?", "answer": i} for i in range(4)]
    train, heldout = tmp_path / "train.jsonl", tmp_path / "heldout.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    heldout.write_text("".join(json.dumps(r) + "\n" for r in rows[1:]))
    with caplog.at_level(logging.WARNING):
        DemoConfig(train_file=train, heldout_file=heldout).load_task()
    assert "2 of 3 held-out problems" in caplog.text


def test_the_example_task_loads_disjoint_and_its_checker_grades() -> None:
    config = DemoConfig(
        train_file=EXAMPLE / "train.jsonl",
        heldout_file=EXAMPLE / "heldout.jsonl",
        keys=TaskKeys(answer="label"),
    )
    train, heldout = config.load_task()
    assert len(train) >= 200 and len(heldout) >= 80
    assert not {p.fields["word"] for p in train} & {p.fields["word"] for p in heldout}
    spec = f"{EXAMPLE / 'check.py'}:score"
    problem = heldout[0]
    right = f"The word belongs to the category of {problem.reference_answer}."
    verdict = call_function(
        spec, problem.problem, right, problem.reference_answer, problem.fields, 0.5
    )
    assert verdict.is_correct and verdict.answer == problem.reference_answer
    hedged = f"Either {problem.reference_answer} or an animal or a fruit."
    verdict = call_function(spec, problem.problem, hedged, problem.reference_answer, {}, 0.5)
    assert (verdict.solution_score, verdict.reasoning_score) == (1.0, 0.0) or (
        problem.reference_answer in ("animal", "fruit")
    )
