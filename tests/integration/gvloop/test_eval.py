"""`gvloop eval` on a model directory: the default model on the built-in addition set gives
the same greedy accuracy as the learning benchmark's evaluator (`bench/naive_loop.py`), and the
report's JSON carries every metric; bad input is exit 2 with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from gvloop.cli import app
from services.model_files import prepare_default_model
from services.settings import CommonSettings
from tests.utils.bench import naive_loop

pytestmark = pytest.mark.slow

PROBLEMS = 30


def test_greedy_accuracy_equals_the_naive_loops_evaluator(tmp_path: Path) -> None:
    model_dir = prepare_default_model(CommonSettings().data_dir)
    out = tmp_path / "report.json"
    args = ["eval", str(model_dir), "--heldout", "addition", "--limit", str(PROBLEMS)]
    result = CliRunner().invoke(app, [*args, "-k", "2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert "pass@1 (greedy)" in result.output and "maj@2" in result.output

    naive = naive_loop()
    cfg = naive.NaiveConfig(model=str(model_dir), heldout=PROBLEMS, diversity_problems=0)
    _, heldout = naive.make_task(cfg)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    accuracy = naive.evaluate(model, tok, heldout, cfg).accuracy

    assert report["problems"] == PROBLEMS and report["grader"] == "rules"
    assert report["pass_at_1"]["value"] == pytest.approx(accuracy)
    assert 0.2 <= accuracy <= 0.7  # the default model is at the edge of this task
    # pass@k is at least the chance that one sample is right, and maj@k never beats it
    assert report["maj_at_k"]["value"] <= report["pass_at_k"]["value"]
    assert 0.5 <= report["distinct"]["value"] <= 1.0  # 2 samples: 1/2 when always the same


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{model}", "--heldout", "{dir}/none.jsonl"], "none.jsonl: no such file"),
        (["{dir}/nope", "--heldout", "addition"], "nope: no such model directory"),
        (["{model}", "--heldout", "addition", "-k", "4", "-n", "2"], "n (2) must be at least k"),
        (
            ["{model}", "--heldout", "addition", "--verifier-function", "{dir}/c.py:f"],
            "c.py:f: no file",
        ),
    ],
)
def test_bad_input_is_exit_2_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    model_dir = prepare_default_model(CommonSettings().data_dir)
    filled = [a.format(model=model_dir, dir=tmp_path) for a in args]
    result = CliRunner().invoke(app, ["eval", *filled])
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
