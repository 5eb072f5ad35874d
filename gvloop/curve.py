"""The demo's curve: held-out accuracy of each served weight version with its binomial
standard error, and the diversity of what that version sampled; as a table and as a plot."""

from __future__ import annotations

import json
import math
from pathlib import Path

from pydantic import BaseModel

from services.spread import Spread


class EvalPoint(BaseModel):
    """Held-out accuracy of one served weight version, and how that version sampled the
    training problems (filled in as its samples come back)."""

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
    sampled_correct: int = 0
    distinct_fraction: float | None = None
    """Mean fraction of distinct final answers among the n samples of each training problem:
    1 when every sample answers differently, 1/n when the model has collapsed onto one answer."""
    swap_stopped_s: float | None = None
    """How long the hot swap that brought this version in stopped generation (None: the base
    model, or not known)."""

    @property
    def accuracy(self) -> float:
        return self.correct / self.problems

    @property
    def stderr(self) -> float:
        """Binomial standard error of the accuracy."""
        return math.sqrt(self.accuracy * (1 - self.accuracy) / self.problems)

    @property
    def sampled_accuracy(self) -> float | None:
        return self.sampled_correct / self.sampled if self.sampled else None


def load_curve(path: Path) -> list[EvalPoint]:
    """A curve saved as JSON (`curve.json`); empty when there is none yet."""
    if not path.exists():
        return []
    return [EvalPoint.model_validate(row) for row in json.loads(path.read_text())]


def curve_table(curve: list[EvalPoint]) -> str:
    """The curve as a plain-text table (also what the learning benchmark prints)."""
    lines = [
        "| version | served from (s of training) | samples fed | held-out accuracy "
        "| its training samples correct | distinct answers | its swap stopped generation |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in curve:
        sampled = "-" if p.sampled_accuracy is None else f"{100 * p.sampled_accuracy:.0f}%"
        distinct = "-" if p.distinct_fraction is None else f"{p.distinct_fraction:.2f}"
        accuracy = (
            f"{100 * p.accuracy:.1f}% ± {100 * p.stderr:.1f} ({p.problems})"
            if p.problems
            else "not evaluated"
        )
        stopped = "-" if p.swap_stopped_s is None else f"{p.swap_stopped_s:.2f}s"
        lines.append(
            f"| v{p.version} | {p.at_s:.0f} | {p.samples_fed} | {accuracy} | {sampled} "
            f"| {distinct} | {stopped} |"
        )
    if spread := Spread.of([p.swap_stopped_s for p in curve if p.swap_stopped_s is not None]):
        lines.append(f"\nGeneration stopped by the hot swaps: {spread}")
    return "\n".join(lines)


def plot_curve(curve: list[EvalPoint], path: Path) -> None:
    """Held-out accuracy (± 1 standard error) and the distinct-answer ratio, against the
    samples fed to training (left) and against wall time (right)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and in CI
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    xs = {
        "samples fed to training": [p.samples_fed for p in curve],
        "minutes of training": [p.at_s / 60 for p in curve],
    }
    for ax, (label, x) in zip(axes, xs.items(), strict=True):
        ax.errorbar(
            x,
            [100 * p.accuracy for p in curve],
            yerr=[100 * p.stderr for p in curve],
            marker="o",
            capsize=3,
            label="held-out accuracy (± 1 s.e.)",
        )
        ax.set_xlabel(label)
        ax.set_ylim(0, 100)
        diverse = [(v, p.distinct_fraction) for v, p in zip(x, curve, strict=True)]
        diverse = [(v, d) for v, d in diverse if d is not None]
        if diverse:
            right = ax.twinx()
            right.plot(*zip(*diverse, strict=True), "s--", color="tab:orange", label="distinct")
            right.set_ylabel("distinct answers per problem (fraction)")
            right.set_ylim(0, 1.05)
            right.legend(loc="lower right")
        ax.legend(loc="upper left")
    axes[0].set_ylabel("held-out accuracy (%)")
    fig.suptitle("gvloop: agent A on held-out problems, at each served weight version")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
