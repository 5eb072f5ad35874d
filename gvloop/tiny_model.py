"""A tiny model for tests and benchmarks: Llama architecture, head_dim 64 (vLLM's CPU attention
needs it), the default model's real tokenizer and chat template, random weights;
built in seconds."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from services.model_files import prepare_default_model


def make_tiny_model(out_dir: Path, seed: int = 0, num_layers: int = 2, *, data_dir: Path) -> Path:
    """Write an HF safetensors Llama of ~6.5M parameters (mostly the 49k embedding) to out_dir.

    The tokenizer is the default model's, prepared in `data_dir` (GVLOOP_DATA_DIR: once per
    machine, then cached)."""
    tokenizer = AutoTokenizer.from_pretrained(prepare_default_model(data_dir))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # Larger init than the default 0.02 so greedy outputs differ clearly between seeds.
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.2)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir
