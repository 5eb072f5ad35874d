"""The checks a checkpoint passes before any engine pauses: inside the root, complete, and
holding exactly the served model's tensors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from agent_a.checkpoints import check_checkpoint, read_layout, resolve_checkpoint
from agent_a.errors import CheckpointOutsideRootError, CheckpointRejectedError

SERVED = {"embed.weight": (8, 4), "layer.weight": (4, 4)}


def write_checkpoint(path: Path, layout: dict[str, tuple[int, ...]], config: bool = True) -> Path:
    path.mkdir(parents=True)
    save_file({n: np.zeros(s, dtype=np.float32) for n, s in layout.items()}, path / "w.safetensors")
    if config:
        (path / "config.json").write_text("{}")
    return path


class TestResolve:
    def test_absolute_and_relative_paths_inside_the_root(self, tmp_path: Path) -> None:
        step = write_checkpoint(tmp_path / "step_1", SERVED)
        assert resolve_checkpoint(str(step), tmp_path) == step
        assert resolve_checkpoint("step_1", tmp_path) == step

    @pytest.mark.parametrize(
        "raw",
        [
            "/etc",  # absolute, elsewhere
            "../outside",  # climbing out
            "step_1/../../outside",  # climbing out from inside
            "link",  # a symlink inside the root that points out of it
        ],
    )
    def test_escapes_are_refused(self, tmp_path: Path, raw: str) -> None:
        root = tmp_path / "root"
        write_checkpoint(root / "step_1", SERVED)
        write_checkpoint(tmp_path / "outside", SERVED)
        (root / "link").symlink_to(tmp_path / "outside")
        with pytest.raises(CheckpointOutsideRootError, match="outside the checkpoint root"):
            resolve_checkpoint(raw, root)

    def test_missing_directory(self, tmp_path: Path) -> None:
        with pytest.raises(CheckpointRejectedError, match="no directory"):
            resolve_checkpoint("step_9", tmp_path)

    @pytest.mark.parametrize(
        ("raw", "reason"),
        [("step_1\0/../../etc", "NUL byte"), ("a" * 4000, "too long"), ("l/" * 3000, "too long")],
    )
    def test_paths_the_os_refuses_are_rejected(self, tmp_path: Path, raw: str, reason: str) -> None:
        with pytest.raises(CheckpointRejectedError, match=reason):
            resolve_checkpoint(raw, tmp_path)


class TestLayout:
    def test_index_names_the_files(self, tmp_path: Path) -> None:
        step = write_checkpoint(tmp_path / "step", SERVED)
        save_file({"stale.weight": np.zeros(2, dtype=np.float32)}, step / "old.safetensors")
        index = {"weight_map": dict.fromkeys(SERVED, "w.safetensors")}
        (step / "model.safetensors.index.json").write_text(json.dumps(index))
        assert read_layout(step) == SERVED

    def test_truncated_file(self, tmp_path: Path) -> None:
        step = write_checkpoint(tmp_path / "step", SERVED)
        data = (step / "w.safetensors").read_bytes()
        (step / "w.safetensors").write_bytes(data[:-10])
        with pytest.raises(CheckpointRejectedError, match="not a complete safetensors"):
            read_layout(step)

    def test_garbage_header(self, tmp_path: Path) -> None:
        step = tmp_path / "step"
        step.mkdir()
        (step / "w.safetensors").write_bytes(b"\xff" * 64)
        with pytest.raises(CheckpointRejectedError, match="not a complete safetensors"):
            read_layout(step)

    def test_weights_linked_from_outside_the_root(self, tmp_path: Path) -> None:
        elsewhere = write_checkpoint(tmp_path / "elsewhere", SERVED)
        step = tmp_path / "root" / "step"
        step.mkdir(parents=True)
        (step / "w.safetensors").symlink_to(elsewhere / "w.safetensors")
        with pytest.raises(CheckpointOutsideRootError, match="links outside"):
            read_layout(step, root=tmp_path / "root")


class TestCheck:
    def test_same_layout_passes(self, tmp_path: Path) -> None:
        check_checkpoint(write_checkpoint(tmp_path / "s", SERVED), tmp_path, SERVED)

    @pytest.mark.parametrize(
        ("layout", "message"),
        [
            ({"embed.weight": (8, 4)}, "missing tensors: layer.weight"),
            ({**SERVED, "extra.weight": (1,)}, "unexpected tensors: extra.weight"),
            (
                {**SERVED, "layer.weight": (4, 8)},
                "wrong shapes: layer.weight [4, 8] (served: [4, 4])",
            ),
        ],
    )
    def test_layout_mismatch_names_the_tensors(
        self, tmp_path: Path, layout: dict[str, tuple[int, ...]], message: str
    ) -> None:
        with pytest.raises(CheckpointRejectedError, match=re.escape(message)):
            check_checkpoint(write_checkpoint(tmp_path / "s", layout), tmp_path, SERVED)

    def test_without_a_reference_only_completeness_counts(self, tmp_path: Path) -> None:
        check_checkpoint(write_checkpoint(tmp_path / "s", {"x": (1,)}), tmp_path, None)

    def test_config_is_required(self, tmp_path: Path) -> None:
        step = write_checkpoint(tmp_path / "s", SERVED, config=False)
        with pytest.raises(CheckpointRejectedError, match=r"no config\.json"):
            check_checkpoint(step, tmp_path, SERVED)

    def test_no_weights(self, tmp_path: Path) -> None:
        step = tmp_path / "s"
        step.mkdir()
        (step / "config.json").write_text("{}")
        with pytest.raises(CheckpointRejectedError, match=r"no \*\.safetensors"):
            check_checkpoint(step, tmp_path, SERVED)
