"""What agent A checks before it asks an engine to load a checkpoint, without loading it: the
directory lies inside the checkpoint root (after symlinks), and its safetensors files are
complete and hold exactly the tensors (names and shapes) of the served model.

The last check matters because vLLM's in-place reload does not: a checkpoint with a tensor of
the wrong shape or a missing tensor "loads" without an error and serves garbage.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from agent_a.errors import CheckpointOutsideRootError, CheckpointRejectedError

Layout = dict[str, tuple[int, ...]]
INDEX_FILE = "model.safetensors.index.json"
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit


def resolve_checkpoint(raw: str, root: Path) -> Path:
    """The checkpoint directory `raw` names (absolute, or relative to `root`), refused unless
    it resolves, symlinks followed, to a directory inside `root`."""
    root = root.resolve()
    if "\0" in raw:
        raise CheckpointRejectedError(f"checkpoint_dir {raw!r}: a path cannot hold a NUL byte")
    try:
        path = (root / raw).resolve()  # an absolute `raw` replaces root in the join
        is_dir = path.is_dir()
    except OSError as exc:  # a name too long, a symlink loop
        raise CheckpointRejectedError(f"checkpoint_dir {raw[:200]!r}: {exc.strerror}") from exc
    if not path.is_relative_to(root):
        raise CheckpointOutsideRootError(
            f"checkpoint_dir {raw!r} resolves to {path}, outside the checkpoint root {root} "
            "(GVLOOP_CHECKPOINT_DIR): agent A loads weights only from inside it"
        )
    if not is_dir:
        raise CheckpointRejectedError(f"checkpoint_dir {raw!r}: no directory at {path}")
    return path


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files a loader reads: those the index names, else every one."""
    index = directory / INDEX_FILE
    if index.exists():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointRejectedError(f"{index}: not a safetensors index ({exc})") from exc
        return [directory / name for name in names]
    return sorted(directory.glob("*.safetensors"))


def read_layout(directory: Path, root: Path | None = None) -> Layout:
    """Tensor name -> shape over the checkpoint's files, from their headers only; with `root`,
    every file must resolve inside it too (no weights linked in from elsewhere)."""
    files = weight_files(directory)
    if not files:
        raise CheckpointRejectedError(f"{directory}: no *.safetensors weights")
    layout: Layout = {}
    for path in files:
        if root is not None and not path.resolve().is_relative_to(root.resolve()):
            raise CheckpointOutsideRootError(f"{path} links outside the checkpoint root {root}")
        layout.update(_file_layout(path))
    return layout


def _file_layout(path: Path) -> Layout:
    try:
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > MAX_HEADER_BYTES:
                raise ValueError(f"header of {header_len} bytes")
            header = json.loads(f.read(header_len))
        data_bytes = path.stat().st_size - 8 - header_len
        header.pop("__metadata__", None)
        layout: Layout = {}
        for name, info in header.items():
            end = info["data_offsets"][1]
            if end > data_bytes:
                raise ValueError(f"{name} ends at byte {end}, the file holds {data_bytes}")
            layout[name] = tuple(int(d) for d in info["shape"])
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise CheckpointRejectedError(f"{path}: not a complete safetensors file ({exc})") from exc
    return layout


def check_checkpoint(directory: Path, root: Path, reference: Layout | None) -> None:
    """Refuse a checkpoint that is not a full, same-shaped copy of the served model."""
    if not (directory / "config.json").exists():
        raise CheckpointRejectedError(f"{directory}: no config.json (not an HF checkpoint)")
    layout = read_layout(directory, root)
    if reference is None:
        return
    missing = sorted(reference.keys() - layout.keys())
    unexpected = sorted(layout.keys() - reference.keys())
    reshaped = sorted(
        f"{n} {list(layout[n])} (served: {list(reference[n])})"
        for n in layout.keys() & reference.keys()
        if layout[n] != reference[n]
    )
    problems = [
        f"{label}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}"
        for label, items in (
            ("missing tensors", missing),
            ("unexpected tensors", unexpected),
            ("wrong shapes", reshaped),
        )
        if items
    ]
    if problems:
        raise CheckpointRejectedError(
            f"{directory} does not match the served model: {'; '.join(problems)}"
        )
