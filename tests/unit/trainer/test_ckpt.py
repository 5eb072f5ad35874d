"""Checkpoints: complete or absent, loadable by transformers, found newest-first by step number,
pruned to the newest N, and their trainer state round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainer import ckpt
from trainer.distributed import full_state_dicts


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path):
    """The tiny model after one AdamW step, so the optimizer has state to save."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(input_ids=torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward()
    optimizer.step()
    return model, tokenizer, optimizer


def state(step: int, ids: list[str] | None = None) -> ckpt.TrainerState:
    return ckpt.TrainerState(
        step=step, version=step, served_version=step - 1, committed_ids=ids or []
    )


def test_save_writes_a_complete_loadable_checkpoint(tmp_path: Path, trained) -> None:
    model, tokenizer, optimizer = trained
    full = full_state_dicts(model, optimizer)
    path = ckpt.save_checkpoint(tmp_path, model, tokenizer, *full, state(3, ["1-0", "2-0"]))
    assert path == tmp_path / "step_00000003"
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000003"]  # no temporary left
    for name in ("model.safetensors", "config.json", "tokenizer.json", ckpt.STATE_PT):
        assert (path / name).exists(), name

    loaded = AutoModelForCausalLM.from_pretrained(path)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert ckpt.read_state(path).committed_ids == ["1-0", "2-0"]

    fresh = torch.optim.AdamW(loaded.parameters(), lr=1e-3)
    ckpt.load_optimizer_state(path, loaded, fresh)
    assert_same_optimizer_state(optimizer, fresh)


def test_a_checkpoint_of_the_single_process_trainer_still_resumes(tmp_path: Path, trained) -> None:
    # before torchrun, the optimizer state was saved as optimizer.state_dict(): by param index
    model, tokenizer, optimizer = trained
    path = ckpt.save_checkpoint(
        tmp_path, model, tokenizer, *full_state_dicts(model, optimizer), state(1)
    )
    torch.save({"optimizer": optimizer.state_dict()}, path / ckpt.STATE_PT)
    loaded = AutoModelForCausalLM.from_pretrained(path)
    fresh = torch.optim.AdamW(loaded.parameters(), lr=1e-3)
    ckpt.load_optimizer_state(path, loaded, fresh)
    assert_same_optimizer_state(optimizer, fresh)


def assert_same_optimizer_state(
    saved: torch.optim.Optimizer, loaded: torch.optim.Optimizer
) -> None:
    assert len(saved.state) == len(loaded.state) > 0
    for before, after in zip(saved.state.values(), loaded.state.values(), strict=True):
        assert torch.equal(before["exp_avg"], after["exp_avg"])
        assert torch.equal(before["exp_avg_sq"], after["exp_avg_sq"])
        assert after["step"] == before["step"]


def test_an_existing_step_is_never_overwritten(tmp_path: Path, trained) -> None:
    (tmp_path / "step_00000005").mkdir()
    with pytest.raises(FileExistsError, match="step_00000005"):
        model, tokenizer, optimizer = trained
        ckpt.save_checkpoint(
            tmp_path, model, tokenizer, *full_state_dicts(model, optimizer), state(5)
        )


def test_listing_orders_by_step_and_ignores_partial_ones(tmp_path: Path) -> None:
    for name in ("step_9", "step_00000010", "step_2", ".tmp-step_00000011-123", "step_x"):
        (tmp_path / name).mkdir()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == [
        "step_2",
        "step_9",
        "step_00000010",
    ]
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "step_00000010"
    assert ckpt.latest_checkpoint(tmp_path / "none") is None

    ckpt.remove_partial(tmp_path)
    assert not (tmp_path / ".tmp-step_00000011-123").exists()


def test_prune_keeps_the_newest_and_what_agent_a_is_loading(tmp_path: Path) -> None:
    paths = [tmp_path / f"step_{n:08d}" for n in range(1, 6)]
    for path in paths:
        path.mkdir()
    removed = ckpt.prune_checkpoints(tmp_path, keep=2, protect={paths[1]})
    assert removed == [paths[0], paths[2]]
    assert ckpt.list_checkpoints(tmp_path) == [paths[1], paths[3], paths[4]]
