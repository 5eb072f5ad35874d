"""What a `--train` run keeps besides its curve: `run.json`, what it was started with (what
`gvloop up --resume` goes on with), and at its end `<run_dir>/model`, the last version agent A
served (the one the curve's last point measured) as an HF directory that transformers and vLLM
load as it is, with its tokenizer and chat template, and a model card (README.md) that says how
it was made: the base model, the data, the verifier, the settings and the curve."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from pydantic import BaseModel

from gvloop.curve import EvalPoint, curve_table
from gvloop.demo import DemoConfig

# what a checkpoint holds for the trainer alone (trainer/ckpt.py)
TRAINER_FILES = ("trainer_state.json", "trainer_state.pt")
RUN_FILE = "run.json"


class RunRecord(BaseModel):
    """What a `--train` run was started with."""

    model: str
    """The base model's directory (or hub name)."""
    config: DemoConfig
    env: dict[str, str]
    """The settings the run gave its components (the verifier function, the trainer's)."""

    def save(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / RUN_FILE).write_text(self.model_dump_json(indent=2))

    @classmethod
    def load(cls, run_dir: Path) -> RunRecord:
        """ValueError when `run_dir` holds no run a `--train` run started."""
        path = run_dir / RUN_FILE
        if not path.is_file():
            raise ValueError(f"{run_dir}: not a --train run's directory (no {RUN_FILE})")
        return cls.model_validate_json(path.read_text())


def export_model(
    run_dir: Path,
    base_model: str,
    curve: list[EvalPoint],
    config: DemoConfig,
    settings: dict[str, str],
) -> Path:
    """Copy the last served weights into `<run_dir>/model` and write its model card."""
    served = curve[-1].checkpoint_dir if curve else None
    source = Path(served or base_model)
    if not source.is_dir():  # pruned by the trainer's last checkpoints, after the run ended
        raise FileNotFoundError(source)
    out = run_dir / "model"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(source, out, ignore=shutil.ignore_patterns(*TRAINER_FILES))
    (out / "README.md").write_text(model_card(base_model, source, curve, config, settings))
    return out


def model_card(
    base_model: str,
    source: Path,
    curve: list[EvalPoint],
    config: DemoConfig,
    settings: dict[str, str],
) -> str:
    first, last = curve[0], curve[-1]
    measured = [p for p in curve if p.problems]
    gain = (
        f"from {100 * first.accuracy:.1f}% to {100 * last.accuracy:.1f}% held-out accuracy"
        if first.problems and last.problems
        else "held-out accuracy below"
    )
    keys = config.keys
    heldout = max((p.problems for p in measured), default=0)
    prompt_column = f"`{keys.prompt}`" if keys.prompt else "the first of problem, question, prompt"
    lines = [
        "---",
        f"base_model: {Path(base_model).name}",
        "library_name: transformers",
        "tags: [gvloop, verifier-feedback]",
        "---",
        "",
        f"# {Path(base_model).name}, trained by gvloop",
        "",
        f"Trained by gvloop's generate-verify loop from `{base_model}` for "
        f"{last.at_s:.0f} s, on {last.samples_fed} verified samples: {gain} "
        f"(version v{last.version}, `{source.name}`), {time.strftime('%Y-%m-%d', time.gmtime())}.",
        "",
        "    " + " ".join(sys.argv),
        "",
        "## Data",
        "",
        f"- training problems: `{config.train_file}`",
        f"- held-out problems: `{config.heldout_file}` ({heldout} measured)",
        f"- prompt column: {prompt_column}; reference answer column: `{keys.answer}`",
        f"- system prompt: {config.system_prompt!r}"
        if config.system_prompt
        else "- system prompt: none (the chat template's default)",
        f"- verifier: `{settings.get('GVLOOP_VERIFIER_FUNCTION', 'the built-in rules')}`",
        "",
        "## Held-out accuracy",
        "",
        f"Greedy, {heldout} held-out problems, ± 1 standard error, before training and after "
        "each hot swap:",
        "",
        curve_table(curve),
        "",
        "## Settings",
        "",
        "What this run set beyond each setting's default (`GVLOOP_*` variables):",
        "",
        *(f"- `{name}={value}`" for name, value in sorted(settings.items())),
        "",
    ]
    return "\n".join(lines)
