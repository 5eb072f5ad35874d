"""Learning benchmark: gvloop against a naive single-process loop, side by side, on the same
problems, the same held-out evaluation and the same time budget of training.

Each gvloop row runs the whole local pipeline (`gvloop up --demo`) with one trainer recipe; the
naive row (`bench/naive_loop.py`) generates with HF `generate`, grades with the verifier's rules
and takes the same loss' steps one after the other in one process, with the demo recipe's
hyperparameters. Time is seconds of training. Both are evaluated the same way and off the
clock: the naive loop stops its clock while it evaluates; gvloop records when each version
began to be served and keeps every checkpoint, which the naive loop's evaluation (HF greedy,
the same held-out problems and grading) measures once the run is over.

    python bench/bench_learning.py                                 # addition, 600 s each
    python bench/bench_learning.py --problems words --time-budget 900 --recipes demo
    python bench/bench_learning.py --recipes demo,demo+is,deep,deep+is --no-naive  # off-policy
    python bench/bench_learning.py --recipes demo,demo+count,demo+batch --no-naive  # exploration

It prints every curve, then for each gvloop row the time it took to reach the naive loop's best
accuracy against the time the naive loop took (the ratio: below 1, gvloop got there first),
and how far each row's trainer was from the engine that sampled its batches over time: the
mismatch KL (`trainer/off_policy.py`) by versions behind. The `deep` rows hold six batches in
the queue instead of three (and skip nothing as stale), so that samples are trained further
behind; `+is` turns on the token-level importance weights.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import torch
import typer
from naive_loop import (  # beside this script
    CurvePoint,
    NaiveConfig,
    evaluate,
    make_task,
    run_naive,
)
from transformers import AutoModelForCausalLM, AutoTokenizer

from gvloop.curve import EvalPoint, curve_table
from gvloop.demo import DEMO_RECIPE, DemoConfig
from gvloop.problems import PROBLEM_SETS
from gvloop.stack import new_run_dir, run_stack, training_stack
from gvloop.topology import StackTopology
from services.logs import setup_logging
from services.settings import CommonSettings
from trainer.settings import TrainerSettings

# The seed's settings, stated rather than inherited, so that the row means the same whatever
# the demo's recipe becomes.
SEED = {
    "GVLOOP_TRAINER_LR": "1e-5",
    "GVLOOP_TRAINER_LAMBDA1": "2.0",
    "GVLOOP_TRAINER_SKIP_GROUPS": "none",
}
IS = {"GVLOOP_TRAINER_IS_WEIGHTING": "token"}
DEEP = {"GVLOOP_MAX_BACKLOG": str(6 * TrainerSettings().batch_size),
        "GVLOOP_TRAINER_MAX_STALENESS": "1000"}  # fmt: skip
RECIPES: dict[str, dict[str, str]] = {
    "seed": SEED,
    "lambda1=10": {**DEMO_RECIPE, "GVLOOP_TRAINER_SKIP_GROUPS": "none"},
    "demo": DEMO_RECIPE,
    "demo+is": {**DEMO_RECIPE, **IS},
    "deep": {**DEMO_RECIPE, **DEEP},
    "deep+is": {**DEMO_RECIPE, **DEEP, **IS},
    # outcome-based exploration (docs/trainer.md#exploration-bonus), beta at its default
    "demo+count": {**DEMO_RECIPE, "GVLOOP_TRAINER_EXPLORATION": "count",
                   "GVLOOP_TRAINER_EXPLORATION_BASELINE": "mean"},
    "demo+batch": {**DEMO_RECIPE, "GVLOOP_TRAINER_EXPLORATION": "batch"},
}  # fmt: skip


def first_reaching(points: list[tuple[float, float]], accuracy: float) -> float | None:
    """Seconds of training at the first point at or above `accuracy`."""
    return next((t for t, a in points if a >= accuracy - 1e-9), None)


def mismatch_over_time(metrics_file: Path) -> str:
    """The trainer's mismatch KL per step, by versions behind, from its JSON lines: one line
    per step, `step 3 at 95s: 1.2e-05 (k=0 1.1e-05, k=1 3.0e-04)`."""
    lines = []
    for line in metrics_file.read_text().splitlines():
        event = json.loads(line)
        if event["event"] != "step" or event.get("mismatch_kl") is None:
            continue
        by_k = ", ".join(f"k={k} {kl:.1e}" for k, kl in event["mismatch_kl_by_behind"].items())
        lines.append(
            f"  step {event['step']}: {event['mismatch_kl']:.1e} ({by_k}), "
            f"{100 * event['ratio_outside']:.2f}% outside, {event['masked']} masked"
        )
    return "\n".join(lines) or "  no step measured"


def evaluate_after(curve: list[EvalPoint], base_model: str, cfg: NaiveConfig) -> list[EvalPoint]:
    """Each served version's checkpoint evaluated as the naive loop evaluates its own: the same
    held-out problems, HF greedy decoding (pass@1) and samples (pass@k, distinct answers), the
    same grading, and off the clock."""
    _, heldout = make_task(cfg)
    tok = AutoTokenizer.from_pretrained(base_model)
    evaluated = []
    for point in curve:
        source = point.checkpoint_dir or base_model
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        result = evaluate(model, tok, heldout, cfg)
        update = {"problems": len(heldout), "correct": round(result.accuracy * len(heldout))}
        if result.pass_at_k is not None and result.distinct is not None:
            update |= {
                "passk_n": cfg.diversity_samples,
                "passk_k": cfg.pass_k,
                "passk_problems": min(cfg.diversity_problems, len(heldout)),
                "pass_at_k": result.pass_at_k.value,
                "pass_at_k_stderr": result.pass_at_k.stderr,
                "heldout_distinct_fraction": result.distinct.value,
                "heldout_distinct_stderr": result.distinct.stderr,
            }
        evaluated.append(point.model_copy(update=update))
    return evaluated


def main(
    problems: Annotated[str, typer.Option(help=f"One of {sorted(PROBLEM_SETS)}.")] = "addition",
    time_budget: Annotated[float, typer.Option(help="Seconds of training per run.")] = 600,
    heldout: Annotated[int, typer.Option(help="Held-out problems.")] = 100,
    recipes: Annotated[str, typer.Option(help=f"Comma-separated, of {sorted(RECIPES)}.")] = (
        "seed,lambda1=10,demo"
    ),
    naive: Annotated[bool, typer.Option(help="Run the naive loop too.")] = True,
) -> None:
    common = CommonSettings()
    setup_logging(common.log_level)
    problem_set = PROBLEM_SETS[problems]
    config = DemoConfig(
        train_file=problem_set.train,
        heldout_file=problem_set.heldout,
        heldout_size=heldout,
        time_budget_s=time_budget,
        live_eval=False,
    )
    _, model, _ = training_stack(common, common.model)
    naive_config = NaiveConfig(
        model=model,
        task=f"{problem_set.train},{problem_set.heldout}",
        heldout=heldout,
        problems_per_step=TrainerSettings().batch_size // config.samples_per_problem,
        samples_per_problem=config.samples_per_problem,
        temperature=config.sampling.temperature,
        max_new_tokens=config.sampling.max_tokens or 48,
        eval_max_tokens=config.eval_max_tokens,
        lr=float(DEMO_RECIPE["GVLOOP_TRAINER_LR"]),
        lambda1=float(DEMO_RECIPE["GVLOOP_TRAINER_LAMBDA1"]),
        time_budget_s=time_budget,
        # pass@k and distinct answers as the demo measures them (0 samples: none)
        diversity_problems=(config.passk_problems or heldout) if config.passk_n else 0,
        diversity_samples=config.passk_n or config.passk_k,
        pass_k=config.passk_k,
    )
    # (s, accuracy, stderr, pass@k or None)
    curves: dict[str, list[tuple[float, float, float, float | None]]] = {}
    for name in recipes.split(","):
        started = time.monotonic()
        run_common, model, env = training_stack(common, common.model)
        recipe = RECIPES[name]
        if "GVLOOP_MAX_BACKLOG" in recipe:  # the feeders wait for the bound too
            run_common = run_common.model_copy(
                update={"max_backlog": int(recipe["GVLOOP_MAX_BACKLOG"])}
            )
        # every checkpoint kept, to be evaluated once the run is over
        env = {**env, **recipe, "GVLOOP_TRAINER_KEEP_CHECKPOINTS": "100000"}
        run_dir = new_run_dir(common.data_dir, f"bench-{name}")
        curve: list[EvalPoint] | None = run_stack(
            run_common, model, StackTopology.from_settings(), config, env=env, run_dir=run_dir
        )
        assert curve is not None
        curve = evaluate_after(curve, model, naive_config)
        print(f"\ngvloop, recipe {name} {recipe}, {time.monotonic() - started:.0f}s:")
        print(curve_table(curve))
        print("mismatch KL (trainer against sampler) by step:")
        print(mismatch_over_time(run_dir / "trainer-metrics.jsonl"))
        curves[f"gvloop {name}"] = [(p.at_s, p.accuracy, p.stderr, p.pass_at_k) for p in curve]
    if naive:
        points: list[CurvePoint] = run_naive(naive_config)
        curves["naive"] = [(p.train_s, p.accuracy, p.stderr, p.pass_at_k) for p in points]
    print(
        f"\nHeld-out accuracy (and pass@{config.passk_k}) against seconds of training "
        f"({problems}, {heldout} problems):"
    )
    for name, points_ in curves.items():
        row = ", ".join(
            f"{t:.0f}s {100 * a:.0f}±{100 * se:.0f}%"
            + ("" if pk is None else f" (pass@{config.passk_k} {100 * pk:.0f}%)")
            for t, a, se, pk in points_
        )
        print(f"| {name} | {row} |")
    if "naive" in curves:
        pairs = [(t, a) for t, a, _, _ in curves["naive"]]
        best = max(a for _, a in pairs)
        naive_s = first_reaching(pairs, best)
        assert naive_s is not None
        print(f"\nnaive loop's best: {100 * best:.0f}% after {naive_s:.0f}s of training")
        print("| run | reaches it after (s) | time ratio vs naive |")
        print("|---|---|---|")
        for name, points_ in curves.items():
            if name == "naive":
                continue
            reached = first_reaching([(t, a) for t, a, _, _ in points_], best)
            ratio = "-" if reached is None or naive_s == 0 else f"{reached / naive_s:.2f}x"
            print(f"| {name} | {'never' if reached is None else f'{reached:.0f}'} | {ratio} |")


if __name__ == "__main__":
    typer.run(main)
