"""The model a `--train` run leaves: the last served checkpoint's files without the trainer's
own, and a model card that says how it was made."""

from __future__ import annotations

from pathlib import Path

import pytest

from gvloop.curve import EvalPoint
from gvloop.demo import DemoConfig
from gvloop.export import export_model
from gvloop.problems import TaskKeys


def checkpoint(path: Path, tag: str) -> Path:
    path.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"):
        (path / name).write_text(f"{tag} {name}")
    (path / "trainer_state.json").write_text("{}")
    (path / "trainer_state.pt").write_text("optimizer")
    return path


def test_the_last_served_version_is_exported_with_its_card(tmp_path: Path) -> None:
    base = checkpoint(tmp_path / "base" / "SmolLM2-135M-Instruct", "base")
    served = checkpoint(tmp_path / "run" / "checkpoints" / "step_00000002", "v2")
    checkpoint(tmp_path / "run" / "checkpoints" / "step_00000003", "v3, never served")
    curve = [
        EvalPoint(version=0, at_s=0, samples_fed=0, problems=80, correct=48),
        EvalPoint(
            version=2,
            at_s=210,
            samples_fed=288,
            problems=80,
            correct=62,
            checkpoint_dir=str(served),
        ),
    ]
    config = DemoConfig(
        train_file="train.jsonl",
        heldout_file="heldout.jsonl",
        keys=TaskKeys(answer="label"),
        heldout_size=80,
    )
    settings = {"GVLOOP_TRAINER_LR": "2e-5", "GVLOOP_VERIFIER_FUNCTION": "/x/check.py:score"}
    out = export_model(tmp_path / "run", str(base), curve, config, settings)

    assert out == tmp_path / "run" / "model"
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "chat_template.jinja",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    assert (out / "model.safetensors").read_text() == "v2 model.safetensors"
    card = (out / "README.md").read_text()
    assert card.startswith("---\nbase_model: SmolLM2-135M-Instruct\n")
    assert "from 60.0% to 77.5% held-out accuracy" in card
    assert "(version v2, `step_00000002`)" in card
    assert "reference answer column: `label`" in card
    assert "- verifier: `/x/check.py:score`" in card
    assert "- `GVLOOP_TRAINER_LR=2e-5`" in card
    assert "| v2 | 210 | 288 | 77.5% ± 4.7 (80) |" in card


def test_without_a_swap_the_base_model_is_exported(tmp_path: Path) -> None:
    base = checkpoint(tmp_path / "base", "base")
    curve = [EvalPoint(version=0, at_s=0, samples_fed=0, problems=10, correct=1)]
    out = export_model(tmp_path / "run", str(base), curve, DemoConfig(), {})
    assert (out / "config.json").read_text() == "base config.json"
    assert "- verifier: `the built-in rules`" in (out / "README.md").read_text()


def test_a_served_checkpoint_pruned_since_is_an_error(tmp_path: Path) -> None:
    curve = [
        EvalPoint(version=1, at_s=1, samples_fed=1, problems=1, correct=0, checkpoint_dir="/gone")
    ]
    with pytest.raises(FileNotFoundError):
        export_model(tmp_path / "run", str(tmp_path), curve, DemoConfig(), {})
