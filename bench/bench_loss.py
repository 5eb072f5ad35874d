"""Loss benchmark: time and peak memory of the feedback-augmented loss against plain
cross-entropy (the baseline), on the same model and batch, in the same run.

Two measurements per variant, each variant in its own process so that one cannot leave memory
to the other: a whole training step (forward, loss, backward, AdamW) and the loss alone on
fixed logits (forward and backward). Peak memory is the rise above the resting state during
the timed steps: on CUDA the allocator's peak, on the CPU the process' peak RSS (VmHWM, reset
through /proc/self/clear_refs after the burn-in; glibc is told to return freed blocks at once).

    python bench/bench_loss.py                       # tiny model, then the default if prepared
    python bench/bench_loss.py --model default --batch 8 --seq 128 --steps 3
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = ("ce", "feedback")


def main(
    model: Annotated[list[str] | None, typer.Option(help="tiny, default, or an HF dir.")] = None,
    batch: Annotated[int, typer.Option(help="Samples per step.")] = 8,
    seq: Annotated[int, typer.Option(help="Tokens per sample.")] = 128,
    prompt: Annotated[int, typer.Option(help="Of which prompt (masked out).")] = 32,
    steps: Annotated[int, typer.Option(help="Timed steps (after one burn-in).")] = 3,
    repeats: Annotated[int, typer.Option(help="Runs per variant, alternated; best kept.")] = 2,
    variant: Annotated[str | None, typer.Option(hidden=True)] = None,
) -> None:
    from services.settings import CommonSettings

    data_dir = CommonSettings().data_dir
    models = model or ["tiny", *(["default"] if default_model_ready(data_dir) else [])]
    if variant is not None:
        print(json.dumps(measure(models[0], variant, batch, seq, prompt, steps, data_dir)))
        return
    rows = []
    for name in models:
        # alternate the variants so that load from other processes hits both alike
        runs = [
            run_child(name, v, batch, seq, prompt, steps) for _ in range(repeats) for v in VARIANTS
        ]
        results = {v: best([r for r in runs if r["variant"] == v]) for v in VARIANTS}
        rows += [(name, v, results[v], results["ce"]) for v in VARIANTS]
    setup = results["ce"]
    print(
        f"\nbatch {batch} x {seq} tokens ({prompt} prompt), best of {repeats} runs of {steps} "
        "timed steps (median), "
        f"device {setup['device']}, torch threads {setup['threads']}"
    )
    header = (
        f"{'model':<8} {'loss':<9} {'step s':>8} {'x ce':>6} {'step MB':>9} {'x ce':>6} "
        f"{'loss s':>8} {'x ce':>6} {'loss MB':>9} {'x ce':>6}"
    )
    print(header)
    print("-" * len(header))
    for name, v, r, base in rows:
        cells = [f"{name:<8} {v:<9}"]
        for key, fmt in (
            ("step_s", ".3f"),
            ("step_mb", ".0f"),
            ("loss_s", ".4f"),
            ("loss_mb", ".0f"),
        ):
            ratio = r[key] / base[key] if base[key] else float("nan")
            cells.append(f"{r[key]:>8{fmt}} {ratio:>6.2f}")
        print(" ".join(cells))


def best(runs: list[dict]) -> dict:
    """The fastest time and the smallest peak of a variant's runs."""
    return {
        **runs[0],
        **{k: min(r[k] for r in runs) for k in ("step_s", "step_mb", "loss_s", "loss_mb")},
    }


def default_model_ready(data_dir: Path) -> bool:
    from services.model_files import ModelNotPreparedError, resolve_model

    try:
        resolve_model("default", data_dir)
    except ModelNotPreparedError:
        return False
    return True


def run_child(model: str, variant: str, batch: int, seq: int, prompt: int, steps: int) -> dict:
    args = ["--model", model, "--variant", variant, "--batch", str(batch), "--seq", str(seq)]
    args += ["--prompt", str(prompt), "--steps", str(steps)]
    # freed blocks go back to the OS at once, so RSS follows what is live
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, __file__, *args], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(
    model_name: str, variant: str, batch: int, seq: int, prompt: int, steps: int, data_dir: Path
) -> dict:
    import torch

    from trainer.loss import feedback_augmented_loss, masked_cross_entropy

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(model_name, data_dir).to(device)
    vocab = model.config.vocab_size
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, vocab, (batch, seq), generator=generator).to(device)
    targets = torch.cat([input_ids[:, 1:], input_ids[:, :1]], dim=1)  # (B, T)
    mask = torch.zeros(batch, seq, device=device)
    mask[:, prompt - 1 : -1] = 1
    scores = torch.rand(3, batch, generator=generator).to(device)

    def loss_of(logits: torch.Tensor) -> torch.Tensor:
        if variant == "ce":
            return masked_cross_entropy(logits, targets, mask)
        return feedback_augmented_loss(
            logits, targets, mask, scores[0], scores[1], scores[2] > 0.5, 2.0, 1.0
        ).loss

    def train_step() -> None:
        loss_of(model(input_ids=input_ids).logits).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with torch.no_grad():
        fixed = model(input_ids=input_ids).logits.detach()

    def loss_step() -> None:
        logits = fixed.clone().requires_grad_(True)
        loss_of(logits).backward()

    step_s, step_mb = timed(train_step, steps, device)
    loss_s, loss_mb = timed(loss_step, steps, device)
    return {
        "variant": variant,
        "step_s": step_s,
        "step_mb": step_mb,
        "loss_s": loss_s,
        "loss_mb": loss_mb,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }


def load_model(name: str, data_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from services.model_files import resolve_model

    if name == "tiny":  # the tests' tiny model: SmolLM2's vocabulary, 2 small layers
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=49152, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, head_dim=64, tie_word_embeddings=True,
        )  # fmt: skip
        return LlamaForCausalLM(config)
    path = resolve_model(name, data_dir)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def timed(fn, steps: int, device) -> tuple[float, float]:
    """Median seconds of `steps` calls after a burn-in, and the peak MB above the rest state."""
    import torch

    fn()  # burn-in: allocator pools, optimizer state, kernels
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        rest = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        rest = proc_status_kb("VmRSS") * 1024
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    peak = (
        torch.cuda.max_memory_allocated()
        if device.type == "cuda"
        else proc_status_kb("VmHWM") * 1024
    )
    return statistics.median(times), (peak - rest) / 2**20


def proc_status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


if __name__ == "__main__":
    typer.run(main)
