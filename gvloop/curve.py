"""The demo's curve: for each served weight version, held-out pass@1 (greedy accuracy, with
its binomial standard error), pass@k and distinct answers from n samples per held-out problem
(with their standard errors over problems), the generation-verification gap of those samples
(opt-in), and how that version sampled the training problems; as a table and as a plot.
Definitions: docs/make-run.md, "What the curve measures"."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from gvloop.gap import REFERENCE, VerifierGap
from services.spread import Spread


class EvalPoint(BaseModel):
    """Held-out pass@1 (greedy accuracy) and pass@k of one served weight version, and how that
    version sampled the training problems (filled in as its samples come back)."""

    version: int
    at_s: float
    """Seconds of training when this version began to be served (0 before the first feed)."""
    samples_fed: int
    problems: int
    """Held-out problems evaluated; 0: not evaluated (yet)."""
    correct: int
    checkpoint_dir: str | None = None
    """The checkpoint served as this version (None: the base model)."""
    sampled: int = 0
    """Training samples this version generated (and `sampled_correct` of them right)."""
    sampled_correct: int = 0
    distinct_fraction: float | None = None
    """On the training samples: the mean fraction of distinct final answers among the n
    samples of each training problem: 1 when every sample answers differently, 1/n when the
    model has collapsed onto one answer."""
    all_wrong_fraction: float | None = None
    """On the training samples: the share of training problems none of whose samples was right
    (the groups the demo's recipe skips)."""
    all_right_fraction: float | None = None
    """On the training samples: the share of training problems all of whose samples were right."""
    # New fields default to None: a curve.json written before them still loads (resumed runs).
    passk_n: int | None = None
    """Held-out samples per problem at the training sampling parameters (None: not sampled)."""
    passk_k: int | None = None
    passk_problems: int | None = None
    """Held-out problems sampled: the first ones of the held-out set."""
    pass_at_k: float | None = None
    """Held-out pass@k, the unbiased estimator 1 - C(n-c, k) / C(n, k) averaged over the sampled
    problems (c right of n)."""
    pass_at_k_stderr: float | None = None
    heldout_distinct_fraction: float | None = None
    """On the held-out samples: the mean fraction of distinct final answers among the n samples
    of each problem."""
    heldout_distinct_stderr: float | None = None
    gap_judge: VerifierGap | None = None
    """The generation-verification gap of the held-out samples with agent B's judge, asked
    without the reference answer, as the verifier (None: not measured)."""
    gap_reference: VerifierGap | None = None
    """The same with the reference as the verifier: the upper bound, gap = 1 - raw accuracy."""
    swap_stopped_s: float | None = None
    """How long the hot swap that brought this version in stopped generation (None: the base
    model, or not known)."""
    swaps_stopped_s: list[float] = []
    """How long each hot swap since the previous point's version stopped generation, this
    version's included: versions swapped in while another was being evaluated have no point."""

    @property
    def accuracy(self) -> float:
        """pass@1: the share of held-out problems answered right greedily."""
        return self.correct / self.problems

    @property
    def stderr(self) -> float:
        """Binomial standard error of the accuracy."""
        return math.sqrt(self.accuracy * (1 - self.accuracy) / self.problems)

    @property
    def sampled_accuracy(self) -> float | None:
        return self.sampled_correct / self.sampled if self.sampled else None


def heldout_summary(point: EvalPoint) -> str:
    """One evaluated point in a line: `accuracy 61.0% ± 4.9, pass@4 80.0% ± 3.1, 0.45 distinct
    per problem (100 problems)` (the samples' problems named when fewer were sampled)."""
    accuracy = f"accuracy {100 * point.accuracy:.1f}% ± {100 * point.stderr:.1f}"
    if point.pass_at_k is None or point.pass_at_k_stderr is None:
        return f"{accuracy} ({point.problems} problems)"
    sampled = (
        f"pass@{point.passk_k} {100 * point.pass_at_k:.1f}% ± {100 * point.pass_at_k_stderr:.1f}"
        f", {point.heldout_distinct_fraction:.2f} distinct per problem"
    )
    if point.passk_problems == point.problems:
        summary = f"{accuracy}, {sampled} ({point.problems} problems)"
    else:
        summary = (
            f"{accuracy} ({point.problems} problems), {sampled} (first {point.passk_problems})"
        )
    return summary if point.gap_judge is None else f"{summary}; {gap_summary(point.gap_judge)}"


def gap_summary(gap: VerifierGap) -> str:
    """`judge gap +5.1 points (relative 0.07): keeps 37/200 at p >= 0.5, 35.1% right vs 30.0%
    raw; judge accuracy 62.0%, AUC 0.55`."""
    kept = (
        f"keeps {gap.kept}/{gap.samples} at p >= {gap.threshold:g}"
        + ("" if gap.kept_accuracy is None else f", {100 * gap.kept_accuracy:.1f}% right")
        + f" vs {100 * gap.raw_accuracy:.1f}% raw"
    )
    auc = "" if gap.auc is None else f", AUC {gap.auc:.2f}"
    return (
        f"judge gap {_points(gap.gap)} (relative {_ratio(gap.relative_gap)}): {kept}; "
        f"judge accuracy {100 * gap.verifier_accuracy:.1f}%{auc}"
    )


def _points(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f} points"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def load_curve(path: Path) -> list[EvalPoint]:
    """A curve saved as JSON (`curve.json`); empty when there is none yet."""
    if not path.exists():
        return []
    return [EvalPoint.model_validate(row) for row in json.loads(path.read_text())]


def passk_label(curve: list[EvalPoint]) -> str:
    """`pass@4 (n=4)` when every sampled point used the same k and n, else `pass@k`."""
    sizes = {(p.passk_k, p.passk_n) for p in curve if p.pass_at_k is not None}
    if len(sizes) != 1:
        return "pass@k"
    ((k, n),) = sizes
    return f"pass@{k} (n={n})"


def _accuracy_cell(p: EvalPoint) -> str:
    if not p.problems:
        return "not evaluated"
    return f"{100 * p.accuracy:.1f}% ± {100 * p.stderr:.1f} ({p.problems})"


def _pass_at_k_cell(p: EvalPoint, label: str) -> str:
    if p.pass_at_k is None or p.pass_at_k_stderr is None:
        return "-"
    cell = f"{100 * p.pass_at_k:.1f}% ± {100 * p.pass_at_k_stderr:.1f} ({p.passk_problems})"
    return cell if label != "pass@k" else f"pass@{p.passk_k} n={p.passk_n}: {cell}"


def _heldout_distinct_cell(p: EvalPoint) -> str:
    if p.heldout_distinct_fraction is None or p.heldout_distinct_stderr is None:
        return "-"
    return f"{p.heldout_distinct_fraction:.2f} ± {p.heldout_distinct_stderr:.2f}"


def _sampled_cell(p: EvalPoint) -> str:
    return "-" if p.sampled_accuracy is None else f"{100 * p.sampled_accuracy:.0f}%"


def _distinct_cell(p: EvalPoint) -> str:
    return "-" if p.distinct_fraction is None else f"{p.distinct_fraction:.2f}"


def _all_wrong_right_cell(p: EvalPoint) -> str:
    if p.all_wrong_fraction is None or p.all_right_fraction is None:
        return "-"
    return f"{100 * p.all_wrong_fraction:.0f}% / {100 * p.all_right_fraction:.0f}%"


def _stopped_cell(p: EvalPoint) -> str:
    return "-" if p.swap_stopped_s is None else f"{p.swap_stopped_s:.2f}s"


def curve_table(curve: list[EvalPoint]) -> str:
    """The curve as a plain-text table (also what the learning benchmark prints). The columns
    of the held-out samples (pass@k, distinct) and of the training groups (all wrong / all
    right) show only when some point has them: a curve without them reads as it always did."""
    label = passk_label(curve)
    columns: list[tuple[str, Callable[[EvalPoint], str]]] = [
        ("version", lambda p: f"v{p.version}"),
        ("served from (s of training)", lambda p: f"{p.at_s:.0f}"),
        ("samples fed", lambda p: str(p.samples_fed)),
        ("held-out accuracy (pass@1)", _accuracy_cell),
    ]
    if any(p.pass_at_k is not None for p in curve):
        columns.append((f"held-out {label}", lambda p: _pass_at_k_cell(p, label)))
        columns.append(("held-out distinct answers", _heldout_distinct_cell))
    columns.append(("its training samples correct", _sampled_cell))
    columns.append(("distinct answers (training)", _distinct_cell))
    if any(p.all_wrong_fraction is not None for p in curve):
        columns.append(("training problems all wrong / all right", _all_wrong_right_cell))
    columns.append(("its swap stopped generation", _stopped_cell))
    lines = [
        "| " + " | ".join(header for header, _ in columns) + " |",
        "|" + "---|" * len(columns),
    ]
    lines += ["| " + " | ".join(cell(p) for _, cell in columns) + " |" for p in curve]
    if spread := Spread.of(swaps_stopped(curve)):
        lines.append(f"\nGeneration stopped by the hot swaps: {spread}")
    if any(p.gap_judge is not None for p in curve):
        lines.append(f"\n{gap_table(curve)}")
    return "\n".join(lines)


def swaps_stopped(curve: list[EvalPoint]) -> list[float]:
    """How long each hot swap up to the curve's last version stopped generation (a curve saved
    before points listed every swap: those of its measured versions)."""
    return [
        stopped
        for p in curve
        for stopped in p.swaps_stopped_s
        or ([p.swap_stopped_s] if p.swap_stopped_s is not None else [])
    ]


def gap_table(curve: list[EvalPoint]) -> str:
    """The generation-verification gap of each measured version's held-out samples: a row for
    the judge, then one for the reference (the upper bound)."""
    lines = [
        "Generation-verification gap on the held-out samples (kept: scored at least the "
        "threshold; relative gap = gap / (1 - raw accuracy)):",
        "| version | verifier | samples | raw accuracy | kept | kept accuracy | gap (points) "
        "| relative gap | verifier accuracy | AUC |",
        "|" + "---|" * 10,
    ]
    for p in curve:
        for gap in (p.gap_judge, p.gap_reference):
            if gap is not None:
                lines.append("| " + " | ".join([f"v{p.version}", *_gap_cells(gap)]) + " |")
    return "\n".join(lines)


def _gap_cells(gap: VerifierGap) -> list[str]:
    if gap.verifier == REFERENCE:
        verifier = "reference (upper bound)"
    else:
        verifier = f"judge {Path(gap.verifier).name}, p >= {gap.threshold:g}"
        if gap.judge_versions:
            verifier += " (weights " + ", ".join(f"v{v}" for v in gap.judge_versions) + ")"
    return [
        verifier,
        str(gap.samples),
        f"{100 * gap.raw_accuracy:.1f}%",
        str(gap.kept),
        "-" if gap.kept_accuracy is None else f"{100 * gap.kept_accuracy:.1f}%",
        "-" if gap.gap is None else f"{100 * gap.gap:+.1f}",
        _ratio(gap.relative_gap),
        f"{100 * gap.verifier_accuracy:.1f}%",
        "-" if gap.auc is None else f"{gap.auc:.2f}",
    ]


def plot_curve(curve: list[EvalPoint], path: Path) -> None:
    """Held-out pass@1 and pass@k (± 1 standard error) together, and the distinct-answer
    ratios (held-out samples, training samples), against the samples fed to training (left)
    and against wall time (right)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and in CI
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    xs = {
        "samples fed to training": [p.samples_fed for p in curve],
        "minutes of training": [p.at_s / 60 for p in curve],
    }
    label = passk_label(curve)
    for ax, (x_label, x) in zip(axes, xs.items(), strict=True):
        ax.errorbar(
            x,
            [100 * p.accuracy for p in curve],
            yerr=[100 * p.stderr for p in curve],
            marker="o",
            capsize=3,
            label="pass@1, greedy (± 1 s.e.)",
        )
        passk = [
            (v, 100 * p.pass_at_k, 100 * p.pass_at_k_stderr)
            for v, p in zip(x, curve, strict=True)
            if p.pass_at_k is not None and p.pass_at_k_stderr is not None
        ]
        if passk:
            v, y, err = zip(*passk, strict=True)
            ax.errorbar(v, y, yerr=err, marker="^", capsize=3, color="tab:green", label=label)
        ax.set_xlabel(x_label)
        ax.set_ylim(0, 100)
        diversity = [
            ("distinct_fraction", "s--", "tab:orange", "distinct (training)"),
            ("heldout_distinct_fraction", "d:", "tab:purple", "distinct (held-out)"),
        ]
        right = None
        for field, style, color, name in diversity:
            points = [(v, getattr(p, field)) for v, p in zip(x, curve, strict=True)]
            points = [(v, d) for v, d in points if d is not None]
            if not points:
                continue
            right = right or ax.twinx()
            right.plot(*zip(*points, strict=True), style, color=color, label=name)
        if right is not None:
            right.set_ylabel("distinct answers per problem (fraction)")
            right.set_ylim(0, 1.05)
            right.legend(loc="lower right")
        ax.legend(loc="upper left")
    axes[0].set_ylabel("held-out problems solved (%)")
    fig.suptitle("gvloop: agent A on held-out problems, at each served weight version")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
