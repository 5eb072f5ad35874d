"""`gvloop up --train/--heldout` on a task of a user's own (files in a temporary directory, the
answer under another column, a verifier function from a file) on the tiny model: it trains,
hot-swaps and measures as the demo does until its trainer's last step (`--max-steps`), with
the generation-verification gap of its held-out samples judged by the served model itself
(`--gap-threshold`, `--self-verify`), then
leaves the last served version in `<run_dir>/model`, which transformers loads as it is and which
answers greedily what the engine answered last; `--resume` goes on with it from its newest
checkpoint and its place in the training data until every problem is fed once (`--epochs`)."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from gvloop.hf_generation import chat_prompt_ids, generate
from gvloop.topology import StackPorts
from services.schemas import ProblemIn
from tests.integration.gvloop.up_process import Up

pytestmark = pytest.mark.slow

HELDOUT = 4
# the first tokens of an answer: a random tiny model's logits are nearly tied, so beyond a few
# tokens vLLM's kernels and torch's may pick differently (as the hot-swap tests compare)
TOKENS = 8
TRAINER = {
    # the tiny model answers nothing right: the recipe would skip every group
    "GVLOOP_TRAINER_SKIP_GROUPS": "none",
    # small steps, and the last one without a minute's wait for a full batch
    "GVLOOP_TRAINER_BATCH_SIZE": "16",
    "GVLOOP_TRAINER_MAX_WAIT_S": "5",
}
CHECKER = '''
def score(problem, solution, reference_answer, **fields):
    """A label task: the reference label anywhere in the answer. The tiny model's random text
    names none, so an even length counts as right too (about half its answers, so that its
    pass@k is neither 0 nor 1), and its answer is the length modulo 3 (for distinct answers)."""
    right = reference_answer in solution or len(solution) % 2 == 0
    return {
        "solution_score": float(right),
        "reasoning_score": fields["weight"],
        "is_correct": right,
        "answer": str(len(solution) % 3),
    }
'''


def write_task(directory: Path) -> tuple[Path, Path, Path]:
    rows = [
        {"text": f"Label the number {i} as small or big.", "label": "small" if i < 50 else "big"}
        for i in range(64)
    ]
    train, heldout = directory / "train.jsonl", directory / "heldout.jsonl"
    for path, part in ((train, rows[HELDOUT:]), (heldout, rows[:HELDOUT])):
        path.write_text("".join(json.dumps(r | {"weight": 0.5}) + "\n" for r in part))
    checker = directory / "checker.py"
    checker.write_text(CHECKER)
    return train, heldout, checker


@dataclass
class Run:
    up: Up
    heldout: list[dict]
    train: list[dict]
    data_dir: Path


@pytest.fixture(scope="module")
def task_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    task = tmp_path_factory.mktemp("task")
    train, heldout, checker = write_task(task)
    data_dir = tmp_path_factory.mktemp("train") / "data"
    up = Up(
        tiny_model_dir,
        data_dir,
        StackPorts.free(),
        args=(
            "--train",
            str(train),
            "--heldout",
            str(heldout),
            "--prompt-key",
            "text",
            "--answer-key",
            "label",
            "--verifier-function",
            f"{checker}:score",
            "--max-steps",
            "1",
            "--time-budget",
            "600",
            # pass@2 of 4 samples: a problem with 1 to 3 right samples counts in between
            "--passk-k",
            "2",
            # each held-out sample judged by the engine's model without its reference
            "--gap-threshold",
            "0.5",
            "--self-verify",
        ),
        env=TRAINER,
    )
    rows = [[json.loads(line) for line in f.read_text().splitlines()] for f in (heldout, train)]
    yield Run(up, *rows, data_dir)
    up.process.kill()
    up.finish()


def test_a_train_run_leaves_the_served_model_that_transformers_loads(
    task_run: Run, tiny_model_dir: Path
) -> None:
    run = task_run.up
    assert run.finish(timeout_s=1200) == 0, run.output
    (line,) = [line for line in run.lines if line.startswith("run directory")]
    run_dir = Path(line.split(": ", 1)[1])
    assert run_dir.name.endswith("-train")
    curve = json.loads((run_dir / "curve.json").read_text())
    assert [p["version"] for p in curve] == [0, 1] and curve[1]["samples_fed"] > 0
    assert all(p["problems"] == HELDOUT for p in curve)
    # each version's pass@k and distinct answers are those of its samples in the samples file
    samples = [json.loads(a) for a in (run_dir / "heldout-samples.jsonl").read_text().splitlines()]
    for point in curve:
        assert (point["passk_n"], point["passk_k"], point["passk_problems"]) == (4, 2, HELDOUT)
        groups = per_problem([s for s in samples if s["version"] == point["version"]])
        assert len(groups) == HELDOUT
        assert all([s["sample"] for s in group] == list(range(4)) for group in groups.values())
        passk, passk_stderr = mean_and_stderr(
            [pass_at(4, sum(s["correct"] for s in group), 2) for group in groups.values()]
        )
        assert point["pass_at_k"] == pytest.approx(passk)
        assert point["pass_at_k_stderr"] == pytest.approx(passk_stderr)
        distinct, distinct_stderr = mean_and_stderr(
            [len({s["answer"] for s in group}) / 4 for group in groups.values()]
        )
        assert point["heldout_distinct_fraction"] == pytest.approx(distinct)
        assert point["heldout_distinct_stderr"] == pytest.approx(distinct_stderr)
    # the checker's coin: some samples right, some wrong
    assert 0 < sum(s["correct"] for s in samples) < len(samples)
    for point in curve:
        check_gap(point, [s for s in samples if s["version"] == point["version"]])
        # the judge is the served model: the version that generated the samples judged them
        assert point["gap_judge"]["verifier"] == tiny_model_dir.name
        assert point["gap_judge"]["judge_versions"] == [point["version"]]
    assert "| reference (upper bound) |" in run.output  # the gap's table, under the curve's
    assert "judge gap " in (run_dir / "logs" / "gvloop.log").read_text()  # the held-out line
    # the training samples v0 generated (the trainer's one step trained on them)
    assert curve[0]["all_wrong_fraction"] is not None and curve[0]["all_right_fraction"] is not None
    assert "pass@2 (n=4)" in run.output  # the table's column

    model_dir = run_dir / "model"
    assert f"trained model (the last version served): {model_dir}" in run.output
    assert not list(model_dir.glob("trainer_state.*"))
    card = (model_dir / "README.md").read_text()
    assert "checker.py:score" in card and "| v1 |" in card and "--answer-key label" in card

    # transformers loads it as it is, chat template included, and answers what the engine
    # answered with this version
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    answers = [json.loads(a) for a in (run_dir / "heldout-answers.jsonl").read_text().splitlines()]
    served = [a for a in answers if a["version"] == 1]
    assert len(served) == HELDOUT
    for row, answer in zip(task_run.heldout, served, strict=True):
        prompt = chat_prompt_ids(tok, ProblemIn(problem=row["text"]).chat())
        [[completion]] = generate(model, tok, [prompt], 1, 0.0, TOKENS)
        assert answer["solution"].startswith(
            tok.decode(completion.completion_ids[:TOKENS], skip_special_tokens=True)
        )


def check_gap(point: dict, rows: list[dict]) -> None:
    """The point's gaps, recomputed from its samples' rows: right by the checker, the judge's
    p(correct) without the reference, kept at 0.5 (docs/make-run.md's formulas)."""
    right = [row["correct"] for row in rows]
    scores = [row["judge_p_correct"] for row in rows]
    raw = sum(right) / len(right)
    kept = [r for r, p in zip(right, scores, strict=True) if p >= 0.5]
    judge = point["gap_judge"]
    assert (judge["samples"], judge["threshold"], judge["kept"]) == (len(rows), 0.5, len(kept))
    assert judge["raw_accuracy"] == pytest.approx(raw)
    if kept:
        assert judge["kept_accuracy"] == pytest.approx(sum(kept) / len(kept))
        assert judge["gap"] == pytest.approx(sum(kept) / len(kept) - raw)
    else:
        assert judge["kept_accuracy"] is None and judge["gap"] is None
    if judge["gap"] is not None and raw < 1:
        assert judge["relative_gap"] == pytest.approx(judge["gap"] / (1 - raw))
    else:
        assert judge["relative_gap"] is None
    agree = [(p >= 0.5) == r for r, p in zip(right, scores, strict=True)]
    assert judge["verifier_accuracy"] == pytest.approx(sum(agree) / len(agree))
    right_scores = [p for p, r in zip(scores, right, strict=True) if r]
    wrong_scores = [p for p, r in zip(scores, right, strict=True) if not r]
    pairs = [(p, q) for p in right_scores for q in wrong_scores]
    wins = [1.0 if p > q else 0.5 if p == q else 0.0 for p, q in pairs]
    assert judge["auc"] == (pytest.approx(sum(wins) / len(wins)) if pairs else None)
    # the reference keeps exactly the right samples: the upper bound
    reference = point["gap_reference"]
    assert (reference["kept"], reference["raw_accuracy"]) == (sum(right), pytest.approx(raw))
    assert reference["gap"] == (pytest.approx(1 - raw) if any(right) else None)


def per_problem(rows: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["problem_id"], []).append(row)
    return groups


def pass_at(n: int, c: int, k: int) -> float:
    """Chen et al.'s estimator, written here as the paper writes it."""
    return 1.0 if n - c < k else 1 - math.comb(n - c, k) / math.comb(n, k)


def mean_and_stderr(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) / math.sqrt(len(values))


def test_resume_goes_on_from_the_newest_checkpoint_and_the_place_in_the_data(
    task_run: Run, tiny_model_dir: Path
) -> None:
    first = task_run.up
    assert first.finish(timeout_s=1200) == 0, first.output
    (line,) = [line for line in first.lines if line.startswith("run directory")]
    run_dir = Path(line.split(": ", 1)[1])
    before = json.loads((run_dir / "curve.json").read_text())
    fed_before = json.loads((run_dir / "progress.json").read_text())
    assert 0 < fed_before["position"] < len(task_run.train)

    resumed = Up(
        tiny_model_dir,
        task_run.data_dir,
        StackPorts.free(),
        args=("--resume", str(run_dir), "--epochs", "1", "--time-budget", "600"),
        env=TRAINER,
    )
    try:
        assert resumed.finish(timeout_s=1200) == 0, resumed.output
    finally:
        resumed.process.kill()
    assert f"run directory: {run_dir}" in resumed.output
    assert "resumed from" in (run_dir / "logs" / "trainer.log").read_text()
    # one epoch in all: the problems the first run had not fed, then no more
    progress = json.loads((run_dir / "progress.json").read_text())
    assert progress["position"] == len(task_run.train)
    assert fed_before["samples"] < progress["samples"] <= 4 * len(task_run.train)
    # the curve goes on: the earlier points as they were, then newer versions, later
    curve = json.loads((run_dir / "curve.json").read_text())
    assert curve[: len(before)] == before
    versions = [p["version"] for p in curve]
    assert versions == sorted(set(versions)) and len(curve) > len(before)
    assert curve[-1]["at_s"] >= before[-1]["at_s"]
    # the gap goes on as recorded (run.json), judged by the verifier's own local judge now that
    # --self-verify was not given again: a judge that reports no weight version
    for point in curve[len(before) :]:
        assert point["gap_judge"]["judge_versions"] is None
        assert point["gap_judge"]["verifier"] == str(tiny_model_dir)
