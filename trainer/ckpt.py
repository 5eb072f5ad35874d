"""Checkpoints: `step_<N>` directories that agent A can load and the trainer can resume from.

Each holds an HF safetensors model and its tokenizer (what agent A loads), `trainer_state.pt`
(the optimizer state) and `trainer_state.json` (step, weight version, the stream ids of the
samples this checkpoint commits, and their answer counts for the exploration bonus). A
checkpoint is written into a hidden temporary directory, fsynced, then renamed into place: a
directory named `step_<N>` is always complete, so a trainer killed while writing leaves only a
temporary directory, removed on the next start. A write the
file system refuses (disk full, over quota, over a file size limit, any OS error) removes its
temporary directory at once and raises `CheckpointWriteError`: the newest `step_<N>` stays the
newest complete checkpoint, and the trainer (`trainer.ckpt_failures`) tries again later.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, Field
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from trainer.answer_counts import AnswerCountBatch
from trainer.distributed import load_optimizer

logger = logging.getLogger(__name__)

PREFIX = "step_"
TMP_PREFIX = ".tmp-"
STATE_JSON = "trainer_state.json"
STATE_PT = "trainer_state.pt"
# what safetensors and tokenizers (Rust) put in the message of the error they raise for an OSError
RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


class CheckpointWriteError(OSError):
    """A checkpoint the file system would not take; nothing of it is left on disk. `errno` and
    `strerror` are the OS error's, `filename` the checkpoint root."""


def os_errno(exc: BaseException) -> int | None:
    """The errno of the OS error behind `exc`, if any: an OSError in its cause or context chain
    (torch.save wraps the OSError of a file object's write in a RuntimeError), or `(os error N)`
    in a message (safetensors' and tokenizers' errors carry no errno)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None:
            return current.errno
        match = RUST_OS_ERROR.search(str(current))
        if match:
            return int(match.group(1))
        current = current.__cause__ or current.__context__
    return None


class TrainerState(BaseModel):
    """What a checkpoint records besides the weights."""

    step: int = Field(ge=0)
    version: int = Field(ge=0, description="Weight version this checkpoint is published as.")
    served_version: int = Field(ge=0, description="Last version agent A confirmed loading.")
    committed_ids: list[str] = Field(
        description="Stream ids of the samples trained on (or skipped) by the steps this "
        "checkpoint commits, plus any earlier committed ones not yet acknowledged."
    )
    answer_counts: list[AnswerCountBatch] = Field(
        default_factory=list,
        description="The exploration bonus' answer counts the steps this checkpoint commits "
        "trained, one batch per checkpoint version, with any earlier ones not yet in Redis.",
    )
    samples_trained: int = 0
    samples_skipped: int = 0
    tokens_trained: int = 0
    saved_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


def checkpoint_dir(root: Path, step: int) -> Path:
    # zero-padded so that a plain listing sorts by step
    return root / f"{PREFIX}{step:08d}"


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    found = [p for p in root.glob(f"{PREFIX}*") if p.is_dir() and p.name[len(PREFIX) :].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def latest_checkpoint(root: Path) -> Path | None:
    checkpoints = list_checkpoints(root)
    return checkpoints[-1] if checkpoints else None


def read_state(path: Path) -> TrainerState:
    return TrainerState.model_validate_json((path / STATE_JSON).read_text())


def load_optimizer_state(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> None:
    """Into this rank's part of the optimizer (its tensors go to the params' device)."""
    state = torch.load(path / STATE_PT, map_location="cpu", weights_only=True)
    load_optimizer(model, optimizer, state["optimizer"])


def save_checkpoint(
    root: Path,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    model_state: dict[str, Any],
    optimizer_state: dict[str, Any],
    state: TrainerState,
) -> Path:
    """Write `step_<N>` completely, then make it appear at once; returns its path. The state
    dicts are full ones (`trainer.distributed.full_state_dicts`); `model` gives the config.
    Raises CheckpointWriteError, with nothing written left behind, if the file system fails."""
    final = checkpoint_dir(root, state.step)
    if final.exists():
        raise FileExistsError(f"checkpoint {final} exists: resume should have started after it")
    tmp = root / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp, state_dict=model_state, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        # through a Python file: torch.save to a path reports a failed write without its errno
        with (tmp / STATE_PT).open("wb") as out:
            torch.save({"optimizer": optimizer_state}, out)
        # the JSON last: it names the samples this checkpoint commits
        (tmp / STATE_JSON).write_text(state.model_dump_json(indent=1))
        _fsync_tree(tmp)
        tmp.rename(final)
    except BaseException as exc:
        # the partial files would hold the space that a later try needs
        shutil.rmtree(tmp, ignore_errors=True)
        code = os_errno(exc) if isinstance(exc, Exception) else None
        if code is None:
            raise
        raise CheckpointWriteError(code, os.strerror(code), str(root)) from exc
    _fsync_dir(root)
    return final


def prune_checkpoints(root: Path, keep: int, protect: set[Path] | None = None) -> list[Path]:
    """Delete all but the newest `keep` checkpoints, except `protect` (being loaded by
    agent A right now); returns what was deleted."""
    removed = []
    for path in list_checkpoints(root)[:-keep]:
        if path in (protect or set()):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def remove_partial(root: Path) -> None:
    """Temporary directories of checkpoints whose writer died before the rename."""
    for path in root.glob(f"{TMP_PREFIX}{PREFIX}*"):
        logger.info("removing incomplete checkpoint %s", path)
        shutil.rmtree(path, ignore_errors=True)


def _fsync_tree(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
