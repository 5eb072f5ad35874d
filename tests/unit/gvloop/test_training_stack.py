"""The settings a training run (the demo, or `--train`) gives the stack it starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from gvloop.stack import training_stack
from services.settings import CommonSettings


def common(tmp_path: Path) -> CommonSettings:
    return CommonSettings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]


def test_an_engine_step_holds_at_most_what_the_trainer_trains_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GVLOOP_TRAINER_MAX_SEQ_LEN", "768")
    _, _, env = training_stack(common(tmp_path), str(tmp_path), tmp_path / "state")
    assert env["GVLOOP_ENGINE_MAX_NUM_BATCHED_TOKENS"] == "768"
    assert env["GVLOOP_CHECKPOINT_DIR"] == str(tmp_path / "state" / "checkpoints")


def test_a_bound_the_user_set_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GVLOOP_ENGINE_MAX_NUM_BATCHED_TOKENS", "4096")
    _, _, env = training_stack(common(tmp_path), str(tmp_path), tmp_path / "state")
    assert "GVLOOP_ENGINE_MAX_NUM_BATCHED_TOKENS" not in env  # the engine reads the user's
