"""The random Llama builder behind the tests' tiny model and the hot-swap benchmark's sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from gvloop import tiny_model
from gvloop.tiny_model import parse_random, random_llama
from services.settings import CommonSettings


def test_size_names() -> None:
    assert parse_random("random-1b") == "1b"
    assert parse_random("default") is None
    assert parse_random("/models/random-1b") is None


def test_a_sized_model_is_built_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(tiny_model.SIZES, "test", (256, 512, 1))
    data_dir = CommonSettings().data_dir
    out = random_llama(tmp_path / "m", "test", data_dir=data_dir)
    config = json.loads((out / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["head_dim"]) == (256, 1, 64)
    assert config["num_attention_heads"] == 4 and config["num_key_value_heads"] == 4
    assert config["tie_word_embeddings"]
    weights = out / "model.safetensors"
    with safe_open(weights, "pt") as tensors:
        assert tensors.get_tensor("model.embed_tokens.weight").dtype == torch.bfloat16
    built = weights.stat().st_mtime_ns
    assert random_llama(out, "test", data_dir=data_dir) == out
    assert weights.stat().st_mtime_ns == built  # found, not rebuilt


def test_an_unknown_size_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown size '3b'"):
        random_llama(tmp_path / "m", "3b", data_dir=CommonSettings().data_dir)
