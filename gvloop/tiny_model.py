"""Random Llama models for tests and benchmarks: Llama architecture, head_dim 64 (vLLM's CPU
attention needs it), the default model's real tokenizer and chat template, random weights.
The tiny one (tests) builds in seconds; `random_llama` builds larger ones (the hot-swap
benchmark's 1B) from a size name such as `1b`."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from services.model_files import prepare_default_model

# hidden size, MLP size, layers: roughly the shapes of published models of these sizes
SIZES: dict[str, tuple[int, int, int]] = {
    "0.5b": (1024, 4096, 24),
    "1b": (2048, 5632, 22),  # TinyLlama-1.1B's shape
}


def make_tiny_model(out_dir: Path, seed: int = 0, num_layers: int = 2, *, data_dir: Path) -> Path:
    """Write an HF safetensors Llama of ~6.5M parameters (mostly the 49k embedding) to out_dir.

    The tokenizer is the default model's, prepared in `data_dir` (GVLOOP_DATA_DIR: once per
    machine, then cached). Its init is larger than the usual 0.02, so that greedy outputs
    differ clearly between seeds."""
    return _write_llama(out_dir, 128, 256, num_layers, seed, 0.2, torch.float32, data_dir)


def random_llama(out_dir: Path, size: str, *, data_dir: Path, seed: int = 0) -> Path:
    """Write a random bfloat16 Llama of `size` (a key of SIZES) to out_dir, unless there."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}: one of {', '.join(SIZES)}")
    if (out_dir / "config.json").exists():
        return out_dir
    hidden, mlp, layers = SIZES[size]
    return _write_llama(out_dir, hidden, mlp, layers, seed, 0.02, torch.bfloat16, data_dir)


def parse_random(name: str) -> str | None:
    """`random-1b` -> `1b`; None for any other name."""
    match = re.fullmatch(r"random-(\S+)", name)
    return match.group(1) if match else None


def _write_llama(
    out_dir: Path,
    hidden: int,
    mlp: int,
    layers: int,
    seed: int,
    init_std: float,
    dtype: torch.dtype,
    data_dir: Path,
) -> Path:
    tokenizer = AutoTokenizer.from_pretrained(prepare_default_model(data_dir))
    heads = hidden // 64
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=min(heads, 4) if heads % 4 == 0 else heads,
        head_dim=64,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype=str(dtype).removeprefix("torch."),
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtype)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, init_std)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir
