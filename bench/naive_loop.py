"""The naive loop: generate, verify and train one after the other, in one process.

The baseline half of the learning benchmark. One step is:

    1. sample `samples_per_problem` completions for each of `problems_per_step` training
       problems with HF `generate` (temperature sampling, `max_new_tokens`),
    2. grade them with the verifier's rules (`agent_b.rules`: final answer vs reference),
    3. one optimizer step over all of them, by the trainer's own code: the samples collated as
       the trainer collates them (`trainer.batch`) and stepped by its `Replica` (AdamW on the
       feedback-augmented loss, gradients accumulated over micro-batches, clipped), so the
       baseline's step is the pipeline's step by construction.

Every `eval_every` steps the held-out set is answered greedily and graded the same way; from
`diversity_samples` sampled answers per problem (the first `diversity_problems`), pass@k (the
unbiased estimator, `pass_k`) and the fraction of distinct final answers are reported beside
it, each with its standard error over problems (`gvloop/metrics.py`). Each point carries
optimizer steps, samples trained on and wall time, both
with and without the time spent evaluating (the evaluation would not hold a pipeline back).

The feedback S for a sample comes from one of two rules (`--score`):
- `c`:        solution_score = reasoning_score = is_correct, so S = C.
- `no-opinion`: what the first verifier's rule path sent (agent_b/scoring.py scores the
              outcome instead of the 0.5): solution_score = C and reasoning_score from the
              arithmetic the solution writes out, 0.5 ("no opinion") when it writes none; a
              wrong final answer with no checkable step then gets S = 0.25 (0.125 when it
              writes one wrong "a + b = c"), a right one S = 0.75.

The defaults are the recipe that learnt fastest on 2 CPU cores: the built-in `addition` set,
16 problems x 4 samples at temperature 0.8, lr 2e-5, lambda1 10, lambda2 1, S = C.

    python bench/naive_loop.py --time-budget-s 600 --log /tmp/learn/a.jsonl
    python bench/naive_loop.py --task words --lambda1 2 --lr 1e-5   # the issue's word-problem row
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import PreTrainedTokenizerBase

from agent_b.rules import (
    as_integer,
    check_arithmetic,
    extract_answer,
    normalize_answer,
)
from agent_b.scoring import compute_reasoning_score
from gvloop.hf_generation import Completion, chat_prompt_ids, generate
from gvloop.metrics import Metric, distinct_fraction, pass_at_k
from gvloop.problems import PROBLEM_SETS, load_problems
from services.schemas import Feedback, ProblemIn, Sample, SamplingParams
from trainer.batch import sequence_length
from trainer.distributed import Order, Rank
from trainer.settings import TrainerSettings
from trainer.train import Replica

DEFAULT_MODEL = Path.home() / ".cache/gvloop/models/SmolLM2-135M-Instruct"
NO_OPINION = 0.5  # the first verifier's reasoning score when it had nothing to check
INSTRUCTION = "Reply with 'Answer: N'."


@dataclass
class NaiveConfig:
    model: str = str(DEFAULT_MODEL)
    task: str = "addition"
    """A built-in set of gvloop/data (addition, words), a generated one: add2 (a + b, two-digit),
    add20 (a + b, 1 to 20: the same files as addition), addsub (a + b or a - b, two-digit,
    a >= b), or 'TRAIN.jsonl,HELDOUT.jsonl'."""
    data_dir: str = str(Path(tempfile.gettempdir()) / "gvloop-naive-tasks")
    """Where generated tasks are written as JSONL (then read back with load_problems)."""
    heldout: int = 100
    """Held-out problems evaluated (generated tasks: also how many are set aside)."""
    seed: int = 0
    # sampling
    problems_per_step: int = 16
    samples_per_problem: int = 4
    temperature: float = 0.8
    max_new_tokens: int = 48
    eval_max_tokens: int = 48
    system_prompt: str = ""
    """Empty: none sent, so the chat template's default system prompt applies (as in the
    pipeline, which sends only the user message)."""
    # loss and optimizer
    score: Literal["c", "no-opinion"] = "c"
    lambda1: float = 10.0
    lambda2: float = 1.0
    lr: float = 2e-5
    micro_batch_size: int = 16
    max_grad_norm: float = 1.0
    # budget and evaluation
    max_steps: int = 1000
    time_budget_s: float = 600.0
    """Training wall time (generation + grading + steps, evaluation excluded)."""
    eval_every: int = 2
    diversity_problems: int = 25
    """Held-out problems (the first ones) on which diversity is measured; 0: none."""
    diversity_samples: int = 4
    """n of pass@k: sampled answers per problem, at `temperature`."""
    pass_k: int = 4
    """k of pass@k, at most `diversity_samples`."""
    eval_batch_size: int = 100
    threads: int = 0
    """torch threads; 0: torch's default."""
    log: str = ""
    """JSONL of every step and eval point; empty: none."""


@dataclass
class Problem:
    prompt: str
    answer: str


@dataclass
class CurvePoint:
    step: int
    samples: int  # samples trained on so far
    train_s: float  # wall time of generation + grading + training so far
    wall_s: float  # the same plus evaluation
    accuracy: float  # held-out, greedy
    n: int
    stderr: float
    distinct: float | None  # mean fraction of distinct final answers per problem
    cut: float  # fraction of greedy answers cut at eval_max_tokens with no 'Answer' in them
    sampled_accuracy: float | None  # training samples correct in the last eval_every steps
    pass_at_k: float | None = None  # from the diversity samples, k = pass_k
    pass_at_k_stderr: float | None = None
    distinct_stderr: float | None = None


# ----------------------------------------------------------------------------- tasks


def make_task(cfg: NaiveConfig) -> tuple[list[Problem], list[Problem]]:
    """Training and held-out problems. Generated tasks are drawn with a fixed seed from all
    operand pairs; the held-out set is set aside first, so it is disjoint and of the same
    distribution."""
    if cfg.task in PROBLEM_SETS:  # built in: addition (= add20), words
        train_path, heldout_path = PROBLEM_SETS[cfg.task]
    elif "," in cfg.task:
        train_path, heldout_path = (Path(p) for p in cfg.task.split(","))
    else:
        train_path, heldout_path = write_generated_task(cfg.task, cfg.heldout, cfg.data_dir)

    def read(path: Path, limit: int | None) -> list[Problem]:
        return [Problem(p.problem, p.reference_answer) for p in load_problems(path, limit=limit)]

    return read(train_path, None), read(heldout_path, cfg.heldout)


def write_generated_task(task: str, heldout: int, data_dir: str) -> tuple[Path, Path]:
    operands = range(1, 21) if task == "add20" else range(10, 100)
    rows = []
    for a in operands:
        for b in operands:
            if task in ("add2", "add20", "addsub"):
                rows.append((f"What is {a} + {b}? {INSTRUCTION}", a + b))
            if task == "addsub" and a >= b:
                rows.append((f"What is {a} - {b}? {INSTRUCTION}", a - b))
    if not rows:
        raise ValueError(f"unknown task {task!r}")
    random.Random(1234).shuffle(rows)  # fixed, whatever the run's seed
    out = Path(data_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / f"{task}_train.jsonl", out / f"{task}_heldout.jsonl"
    for path, part in zip(paths, (rows[heldout:], rows[:heldout]), strict=True):
        lines = (json.dumps({"problem": q, "answer": str(n)}) for q, n in part)
        path.write_text("\n".join(lines) + "\n")
    return paths


def grade(text: str, reference: str) -> tuple[bool, str | None]:
    """(correct, extracted answer) by the verifier's rules; integer answers compared as ints."""
    answer = extract_answer(text)
    if answer is None:
        return False, None
    got, want = as_integer(answer), as_integer(reference)
    if got is not None and want is not None:
        return got == want, str(got)
    return normalize_answer(answer) == normalize_answer(reference), normalize_answer(answer)


def feedback(text: str, correct: bool, rule: str) -> tuple[float, float]:
    """(solution_score, reasoning_score) for a sample."""
    if rule == "c":
        return float(correct), float(correct)
    if rule != "no-opinion":
        raise ValueError(f"unknown score rule {rule!r}")
    # the verifier's rule path, with "no opinion" where the judge would speak
    reasoning = compute_reasoning_score(check_arithmetic(text), NO_OPINION, float(correct))
    return float(correct), reasoning


# ----------------------------------------------------------------------------- generation


def prompt_ids(tok: PreTrainedTokenizerBase, problem: Problem, system_prompt: str) -> list[int]:
    return chat_prompt_ids(tok, ProblemIn(problem=problem.prompt).chat(system_prompt or None))


# ----------------------------------------------------------------------------- training


def trainer_settings(cfg: NaiveConfig) -> TrainerSettings:
    """The trainer's settings for the naive loop's step: its loss and optimizer numbers, the
    trainer's defaults for the rest."""
    return TrainerSettings(
        _env_file=None,  # type: ignore[call-arg]
        lr=cfg.lr,
        lambda1=cfg.lambda1,
        lambda2=cfg.lambda2,
        micro_batch_size=cfg.micro_batch_size,
        max_grad_norm=cfg.max_grad_norm,
    )


def load_replica(cfg: NaiveConfig) -> Replica:
    """The trainer's model and optimizer, in this process alone."""
    return Replica(
        cfg.model, None, trainer_settings(cfg), Rank(0, 1, torch.device("cpu"), "single"), None
    )


def as_sample(problem: Problem, completion: Completion, score: tuple[float, float, bool]) -> Sample:
    """A graded completion as the pipeline queues it for the trainer."""
    solution_score, reasoning_score, correct = score
    return Sample(
        problem_id="naive",
        problem=problem.prompt,
        reference_answer=problem.answer,
        messages=ProblemIn(problem=problem.prompt).chat(None),
        prompt_token_ids=completion.prompt_ids,
        completion_token_ids=completion.completion_ids,
        sampling=SamplingParams(),
        solution=completion.text,
        feedback=Feedback(
            solution_score=solution_score, reasoning_score=reasoning_score, is_correct=correct
        ),
        weight_version=0,
        model="naive",
    )


def train_step(replica: Replica, samples: list[Sample], lr: float) -> dict[str, float]:
    """One optimizer step on `samples`, as the trainer takes it (ordered by length, as its
    worker orders a batch)."""
    order = Order("step", lr, sorted(samples, key=sequence_length))
    out = replica.step(order, lambda: False)
    assert out is not None  # nothing asks it to stop
    return dict(ce=out.ce, reward=out.reward, penalty=out.penalty, grad_norm=out.grad_norm)


def imitation_share(scores: list[tuple[float, float, bool]], lambda1: float) -> float:
    """Share of the loss' weight on log p(sample) (1 from CE + lambda1 * S) that falls on wrong
    samples: how much of the step imitates wrong answers."""
    weight = [(1 + lambda1 * (s + r) / 2, c) for s, r, c in scores]
    return sum(w for w, c in weight if not c) / sum(w for w, _ in weight)


# ----------------------------------------------------------------------------- evaluation


@dataclass
class Evaluation:
    accuracy: float  # greedy: pass@1
    stderr: float
    cut: float
    texts: list[str]  # the greedy answers
    pass_at_k: Metric | None  # from the samples; None: no samples (diversity_problems 0)
    distinct: Metric | None


def evaluate(
    model: torch.nn.Module,
    tok: PreTrainedTokenizerBase,
    heldout: list[Problem],
    cfg: NaiveConfig,
) -> Evaluation:
    """Greedy accuracy (pass@1) with its standard error, the cut fraction and the greedy
    answers on `heldout`; pass@k and distinct answers from samples of its first
    `diversity_problems`."""
    prompts = [prompt_ids(tok, p, cfg.system_prompt) for p in heldout]
    correct, cut, texts = [], [], []
    for start in range(0, len(prompts), cfg.eval_batch_size):
        batch = generate(
            model, tok, prompts[start : start + cfg.eval_batch_size], 1, 0.0, cfg.eval_max_tokens
        )
        for problem, (c,) in zip(heldout[start:], batch, strict=False):
            correct.append(grade(c.text, problem.answer)[0])
            texts.append(c.text)
            cut.append(not c.finished and "answer" not in c.text.lower())
    acc = sum(correct) / len(correct)
    stderr = math.sqrt(acc * (1 - acc) / len(correct))
    passk = distinct = None
    if cfg.diversity_problems and cfg.diversity_samples:
        passes, fractions = [], []
        n = cfg.diversity_samples
        subset = prompts[: cfg.diversity_problems]
        per_batch = max(1, cfg.eval_batch_size // n)
        for start in range(0, len(subset), per_batch):
            groups = generate(
                model,
                tok,
                subset[start : start + per_batch],
                n,
                cfg.temperature,
                cfg.eval_max_tokens,
            )
            for problem, group in zip(heldout[start:], groups, strict=False):
                graded = [grade(c.text, problem.answer) for c in group]
                passes.append(pass_at_k(n, sum(ok for ok, _ in graded), cfg.pass_k))
                fractions.append(distinct_fraction([answer for _, answer in graded]))
        passk, distinct = Metric.mean_of(passes), Metric.mean_of(fractions)
    return Evaluation(acc, stderr, sum(cut) / len(cut), texts, passk, distinct)


# ----------------------------------------------------------------------------- the loop


def run_naive(cfg: NaiveConfig) -> list[CurvePoint]:
    """Train from the model's weights by the naive loop; the held-out curve."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    log = open(cfg.log, "a") if cfg.log else None

    def emit(kind: str, row: dict) -> None:
        print(
            kind,
            " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
            ),
            flush=True,
        )
        if log:
            log.write(json.dumps({"kind": kind, **row}) + "\n")
            log.flush()

    emit("config", dataclasses.asdict(cfg))
    train, heldout = make_task(cfg)
    replica = load_replica(cfg)
    model, tok = replica.model, replica.tokenizer
    order = random.Random(cfg.seed).sample(train, len(train))
    started = time.monotonic()
    eval_s = 0.0
    step = samples = 0
    window: list[bool] = []  # correctness of training samples since the last eval point
    curve: list[CurvePoint] = []

    def point() -> None:
        nonlocal eval_s
        t0 = time.monotonic()
        result = evaluate(model, tok, heldout, cfg)
        eval_s += time.monotonic() - t0
        wall = time.monotonic() - started
        sampled = sum(window) / len(window) if window else None
        curve.append(
            CurvePoint(
                step,
                samples,
                wall - eval_s,
                wall,
                result.accuracy,
                len(heldout),
                result.stderr,
                None if result.distinct is None else result.distinct.value,
                result.cut,
                sampled,
                None if result.pass_at_k is None else result.pass_at_k.value,
                None if result.pass_at_k is None else result.pass_at_k.stderr,
                None if result.distinct is None else result.distinct.stderr,
            )
        )
        window.clear()
        emit("eval", dataclasses.asdict(curve[-1]))
        if log:  # the first greedy answers, to see what is being learnt
            texts = result.texts[:8]
            log.write(json.dumps({"kind": "examples", "step": step, "texts": texts}) + "\n")

    point()
    while step < cfg.max_steps and time.monotonic() - started - eval_s < cfg.time_budget_s:
        t0 = time.monotonic()
        start = step * cfg.problems_per_step
        problems = [order[(start + i) % len(order)] for i in range(cfg.problems_per_step)]
        prompts = [prompt_ids(tok, p, cfg.system_prompt) for p in problems]
        groups = generate(
            model, tok, prompts, cfg.samples_per_problem, cfg.temperature, cfg.max_new_tokens
        )
        t1 = time.monotonic()
        batch, scores, graded = [], [], []
        per_problem = []
        for problem, group in zip(problems, groups, strict=True):
            right = 0
            for c in group:
                ok, _ = grade(c.text, problem.answer)
                batch.append(c)
                scores.append((*feedback(c.text, ok, cfg.score), ok))
                graded.append(as_sample(problem, c, scores[-1]))
                right += ok
            per_problem.append(right)
        stats = train_step(replica, graded, cfg.lr)
        step += 1
        samples += len(batch)
        correct = [c for _, _, c in scores]
        window += correct
        emit(
            "step",
            dict(
                step=step,
                samples=samples,
                train_s=time.monotonic() - started - eval_s,
                gen_s=t1 - t0,
                opt_s=time.monotonic() - t1,
                sampled_accuracy=sum(correct) / len(correct),
                # problems whose samples all agree carry no contrast between good and bad
                all_wrong=sum(r == 0 for r in per_problem) / len(per_problem),
                all_right=sum(r == cfg.samples_per_problem for r in per_problem) / len(per_problem),
                mean_s=sum((s + r) / 2 for s, r, _ in scores) / len(scores),
                cut=sum(not c.finished for c in batch) / len(batch),
                cut_no_answer=sum(not c.finished and "answer" not in c.text.lower() for c in batch)
                / len(batch),
                completion_tokens=sum(len(c.completion_ids) for c in batch),
                imitation_share=imitation_share(scores, cfg.lambda1),
                **stats,
            ),
        )
        if step % cfg.eval_every == 0:
            point()
    if not curve or curve[-1].step != step:
        point()
    if log:
        log.close()
    return curve


def parse_args(argv: list[str] | None = None) -> NaiveConfig:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for f in dataclasses.fields(NaiveConfig):
        kind = {"int": int, "float": float}.get(str(f.type), str)  # Literal[...] stays a str
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default)
    return NaiveConfig(**vars(parser.parse_args(argv)))


def main() -> None:
    curve = run_naive(parse_args())
    print(
        f"\n{'step':>5} {'samples':>8} {'train s':>8} {'wall s':>8} {'acc %':>7} {'+-':>5} "
        f"{'distinct':>8} {'cut':>5} {'sampled':>8}"
    )
    for p in curve:
        sampled = "-" if p.sampled_accuracy is None else f"{p.sampled_accuracy:.3f}"
        distinct = "-" if p.distinct is None else f"{p.distinct:.2f}"
        print(
            f"{p.step:>5} {p.samples:>8} {p.train_s:>8.0f} {p.wall_s:>8.0f} "
            f"{100 * p.accuracy:>7.1f} {100 * p.stderr:>5.1f} {distinct:>8} {p.cut:>5.2f} "
            f"{sampled:>8}"
        )


if __name__ == "__main__":
    main()
