"""Checkpoints: complete or absent (a write the disk refuses leaves nothing), loadable by
transformers, found newest-first by step number, pruned to the newest N, and their trainer state
round-trips."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.utils.disk import file_size_limit
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


def chained(error: Exception, context: BaseException) -> Exception:
    error.__context__ = context
    return error


@pytest.mark.parametrize(
    "error, expected",
    [
        # Python's own writes (the trainer state JSON, the temporary directory)
        (OSError(errno.ENOSPC, "No space left on device"), errno.ENOSPC),
        # tokenizers raises a bare Exception, safetensors its SafetensorError: the errno is text
        (Exception("No space left on device (os error 28)"), errno.ENOSPC),
        (Exception("I/O error: File too large (os error 27)"), errno.EFBIG),
        (Exception("I/O error: Disk quota exceeded (os error 122)"), errno.EDQUOT),
        # torch.save into a Python file: the write's OSError is the RuntimeError's context
        (chained(RuntimeError("unexpected pos 704"), OSError(errno.EFBIG, "x")), errno.EFBIG),
        # not the file system's doing: no errno, so the trainer fails as it should
        (RuntimeError("unexpected pos 576 vs 534"), None),
        (ValueError("bad state dict"), None),
    ],
)
def test_the_os_error_behind_a_failed_write_is_found(error: Exception, expected: int) -> None:
    assert ckpt.os_errno(error) == expected


# Beyond the first bytes of the weights; beyond the weights but within the optimizer state.
@pytest.mark.parametrize("limit", [1_000_000, 40_000_000], ids=["weights", "optimizer"])
def test_a_write_the_disk_refuses_leaves_nothing_behind(
    tmp_path: Path, trained, limit: int
) -> None:
    model, tokenizer, optimizer = trained
    full = full_state_dicts(model, optimizer)
    first = ckpt.save_checkpoint(tmp_path, model, tokenizer, *full, state(1, ["1-0"]))
    with file_size_limit(limit), pytest.raises(ckpt.CheckpointWriteError) as raised:
        ckpt.save_checkpoint(tmp_path, model, tokenizer, *full, state(2, ["1-0", "2-0"]))
    assert raised.value.errno == errno.EFBIG
    assert (raised.value.strerror, raised.value.filename) == ("File too large", str(tmp_path))
    # no temporary directory, no step_2: the one before is still the newest, and whole
    assert [p.name for p in tmp_path.iterdir()] == [first.name]
    assert ckpt.latest_checkpoint(tmp_path) == first
    assert ckpt.read_state(first).committed_ids == ["1-0"]
    # the space is back: the same checkpoint is written
    second = ckpt.save_checkpoint(tmp_path, model, tokenizer, *full, state(2, ["1-0", "2-0"]))
    assert ckpt.latest_checkpoint(tmp_path) == second
    AutoModelForCausalLM.from_pretrained(second)
