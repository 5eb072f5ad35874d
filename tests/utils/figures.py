"""Figures that reliability tests report: one readable line on stdout and one JSON line in a
file, so a run's numbers (faults survived, samples lost, inputs tried, 500s) can be collected.

The file is `figures.jsonl` in the test's tmp dir, and also `$GVLOOP_FIGURES_FILE` when set
(e.g. `GVLOOP_FIGURES_FILE=/tmp/figures.jsonl pytest tests/reliability`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Figures:
    test: str
    tmp_dir: Path

    def report(self, **figures: object) -> None:
        """Print `FIGURES <test>: k=v ...` and append the same as one JSON line."""
        line = " ".join(f"{k}={v}" for k, v in figures.items())
        print(f"FIGURES {self.test}: {line}")
        record = json.dumps({"test": self.test, **figures}, default=str)
        targets = [self.tmp_dir / "figures.jsonl"]
        if extra := os.environ.get("GVLOOP_FIGURES_FILE"):
            targets.append(Path(extra))
        for target in targets:
            with target.open("a", encoding="utf-8") as out:
                out.write(record + "\n")
