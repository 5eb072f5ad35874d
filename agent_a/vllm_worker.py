"""Code that runs inside vLLM's worker processes, mixed into the worker class with
`--worker-extension-cls agent_a.vllm_worker.WeightReloadExtension`: the weight loads agent A
calls through /collective_rpc. Only the engine imports this module (it needs vLLM).

Two ways to load a checkpoint:

- Stage, then flip (a swap's default). `gvloop_stage_weights` starts a thread that builds a
  shadow of the model (the same modules, fresh tensors) and runs the model's own
  `load_weights` on it; agent A then polls `gvloop_stage_status`, and each poll runs the next
  slice of the layers' `process_weights_after_loading` on the shadow (the CPU backend packs
  its GEMMs there). The result: the new weights in the engine's own layout, packed GEMMs
  included, while the engine kept serving (a /collective_rpc call runs in the engine's loop
  between steps, so no call may block it long). Inside the pause, `gvloop_flip_weights` copies
  the staged tensors into the live ones (in place: whatever holds a reference to a live tensor
  sees the new values) and hands over the packed GEMMs: no disk, no packing in the pause.
- Reload in place (`gvloop_reload_weights`): vLLM's `reload_weights`, reading the checkpoint
  inside the pause. The recovery path after a failed flip, and the baseline of the benchmark.

The warnings a reload leaves in the engine's log are expected: vLLM 0.32 logs "RotaryEmbedding:
Failed to load weights" and "ParallelLMHead: Failed to load weights" on every reload of a
Llama with tied embeddings.
Both are layers the checkpoint has no tensors for, and vLLM keeps their tensors: the rotary
cos/sin cache is computed from the config, not loaded; the tied LM head's weight is the
embedding's Parameter, which the reload refreshed in place. What it does not refresh is the
LM head's own packed GEMM on the CPU backend (`dispatch_cpu_unquantized_gemm` packs a copy at
load time): after a plain reload the model would compute logits with the OLD embedding (new
body, old head, no error), so the reload re-processes the vocabulary layers, and the stage
processes every layer whose tensors it loaded, the tied head included. The stage therefore
never logs these warnings: it leaves layers without checkpoint tensors alone by construction.
"""

from __future__ import annotations

import copy
import gc
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from types import MethodType
from typing import Any

import psutil
import torch
from vllm.config import set_current_vllm_config
from vllm.model_executor.layers.attention import is_deferred_attention_layer
from vllm.model_executor.layers.quantization.base_config import QuantizeMethodBase
from vllm.model_executor.layers.vocab_parallel_embedding import (
    UnquantizedEmbeddingMethod,
    VocabParallelEmbedding,
)
from vllm.model_executor.model_loader import get_model_loader
from vllm.model_executor.model_loader.reload.layerwise import LAYERWISE_INFO
from vllm.model_executor.model_loader.reload.meta import SKIP_LOAD_TENSORS
from vllm.model_executor.model_loader.reload.sanitize import layer_ref_sentinel

# Packing runs in slices, one per status call, on the engine's thread: a slice may take
# PACK_SHARE of the time since the previous call (under load, calls wait for the engine's
# steps, so slices grow with them and a stage does not crawl), between these bounds.
# under vLLM's logger, whose handler the engine's log has (a logger of ours would have none)
logger = logging.getLogger("vllm.gvloop_stage")

GIB = 2**30
PACK_SHARE = 0.5
PACK_SLICE_MIN_S = 0.02
PACK_SLICE_MAX_S = 0.2
# torch.nn.Module's own bookkeeping: a shadow gets its own copies, never handed to the live one
MODULE_STATE = frozenset({"_parameters", "_buffers", "_modules", "_non_persistent_buffers_set"})


@dataclass
class LayerFlip:
    """What the flip does to one live layer."""

    layer: torch.nn.Module
    copies: list[tuple[torch.Tensor, torch.Tensor]]
    """(live tensor, staged tensor) of equal shape: copied in place."""
    attributes: dict[str, Any]
    """Attributes `process_weights_after_loading` set on the shadow (the CPU backend's packed
    GEMM `cpu_linear`): assigned to the live layer."""


@dataclass
class Staged:
    path: str
    layers: list[LayerFlip]
    seconds: float
    nbytes: int


@dataclass
class Stage:
    """One stage in progress or done: loaded by its thread (`pending`), then packed by status
    calls (`layers`), then `staged`; or `error`."""

    path: str
    started: float = field(default_factory=time.perf_counter)
    pending: list[tuple[torch.nn.Module, torch.nn.Module]] | None = None
    """(live layer, its loaded shadow) still to process, once the thread has loaded them."""
    loaded_s: float = 0.0
    """Seconds the thread took to load the checkpoint."""
    slices: int = 0
    short_of_memory: bool = False
    shadows: list[torch.nn.Module] = field(default_factory=list)
    """Every shadow layer, to release when the stage is dropped."""
    layers: list[LayerFlip] = field(default_factory=list)
    staged: Staged | None = None
    error: str | None = None


class WeightReloadExtension:
    model_runner: Any
    vllm_config: Any
    _gvloop_stage: Stage | None = None
    _gvloop_polled: float = 0.0
    """When the last status call returned (perf_counter): the next slice is sized by the gap."""
    _gvloop_flipped: str | None = None
    """The checkpoint the last flip put in: a second flip of it (an engine reached under two
    URLs gets each call twice) has nothing left to do."""

    def gvloop_extension_ready(self) -> bool:
        """Lets agent A check at start-up that swaps can work on this engine."""
        return True

    def gvloop_reload_weights(self, weights_path: str) -> None:
        """Reload an HF checkpoint directory in place, tied layers included."""
        # staged tensors of older weights must never be flipped in
        self._gvloop_replace_stage(None, None)
        with set_current_vllm_config(self.vllm_config):
            self.model_runner.reload_weights(weights_path=weights_path, is_checkpoint_format=True)
            for module in self.model_runner.get_model().modules():
                if isinstance(module, VocabParallelEmbedding) and isinstance(
                    module.quant_method, UnquantizedEmbeddingMethod
                ):
                    module.quant_method.process_weights_after_loading(module)

    def gvloop_stage_weights(self, weights_path: str, headroom_bytes: int = 0) -> None:
        """Start staging a checkpoint in the background (replacing any staged one), unless the
        host lacks the memory for a second copy of the weights plus `headroom_bytes`: then the
        stage fails at once, marked `short_of_memory`."""
        stage = Stage(weights_path)
        self._gvloop_replace_stage(stage, None)  # an older stage's memory counts as free
        # The weights the last flip replaced (packed GEMMs among them) sit in reference cycles
        # that only a full collection frees: without one, each swap left about half a model
        # behind. Here, outside any pause, and before the memory is measured.
        gc.collect()
        need = stage_bytes(self.model_runner.get_model())
        free = psutil.virtual_memory().available
        if free < need + headroom_bytes:
            stage.short_of_memory = True
            stage.error = (
                f"staging needs {need / GIB:.1f} GiB of host memory and {headroom_bytes / GIB:.1f}"
                f" GiB to spare, {free / GIB:.1f} GiB is available"
            )
            return
        threading.Thread(
            target=self._gvloop_run_stage, args=(stage,), name="gvloop-stage", daemon=True
        ).start()

    def gvloop_stage_status(self) -> dict[str, Any]:
        """Advance the stage by one slice of packing, then report it: {"state": "none" |
        "staging" | "ready" | "failed", "path", "seconds", "error"}."""
        stage = self._gvloop_stage
        if stage is None:
            return {"state": "none"}
        if stage.pending is not None and stage.staged is None and stage.error is None:
            gap = time.perf_counter() - self._gvloop_polled
            budget = min(PACK_SLICE_MAX_S, max(PACK_SLICE_MIN_S, PACK_SHARE * gap))
            try:
                _pack(stage, budget)
            except Exception as exc:
                stage.error = f"{type(exc).__name__}: {exc}"
        self._gvloop_polled = time.perf_counter()
        if stage.staged is not None:
            state = "ready"
            seconds = stage.staged.seconds
        else:
            state = "failed" if stage.error is not None else "staging"
            seconds = time.perf_counter() - stage.started
        return {
            "state": state,
            "path": stage.path,
            "seconds": seconds,
            "error": stage.error,
            "short_of_memory": stage.short_of_memory,
        }

    def gvloop_flip_weights(self, weights_path: str) -> dict[str, Any]:
        """Copy the staged weights of `weights_path` into the live model (engine paused)."""
        stage = self._gvloop_stage
        if stage is None and self._gvloop_flipped == weights_path:
            return {"seconds": 0.0, "bytes": 0}
        if stage is None or stage.staged is None or stage.path != weights_path:
            status = self.gvloop_stage_status()
            raise RuntimeError(f"nothing staged for {weights_path} (stage: {status})")
        started = time.perf_counter()
        with torch.no_grad():
            for flip in stage.staged.layers:
                for live, staged in flip.copies:
                    live.copy_(staged)
                for name, value in flip.attributes.items():
                    setattr(flip.layer, name, value)
        answer = {"seconds": time.perf_counter() - started, "bytes": stage.staged.nbytes}
        # frees the staged copies the live layers did not take over
        self._gvloop_replace_stage(None, weights_path)
        return answer

    def gvloop_discard_staged(self) -> None:
        """Drop staged weights (a thread still running finishes into nothing)."""
        self._gvloop_replace_stage(None, self._gvloop_flipped)

    def _gvloop_replace_stage(self, stage: Stage | None, flipped: str | None) -> None:
        old, self._gvloop_stage, self._gvloop_flipped = self._gvloop_stage, stage, flipped
        if old is not None:
            _release(old)

    def _gvloop_run_stage(self, stage: Stage) -> None:
        try:
            pending, shadows = load_checkpoint(
                self.model_runner.get_model(), self.vllm_config, stage.path
            )
        except Exception as exc:  # reported through gvloop_stage_status
            stage.error = f"{type(exc).__name__}: {exc}"
        else:
            stage.shadows, stage.pending = shadows, pending
            stage.loaded_s = time.perf_counter() - stage.started
            if self._gvloop_stage is not stage:  # dropped while it loaded
                _release(stage)


def stage_bytes(model: torch.nn.Module) -> int:
    """Host memory a stage of `model` takes at its peak: the loaded copy of every tensor, and
    the packed GEMMs the CPU backend builds from it (about as large again)."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return 2 * sum(t.numel() * t.element_size() for t in tensors.values())


def load_checkpoint(
    model: torch.nn.Module, vllm_config: Any, path: str
) -> tuple[list[tuple[torch.nn.Module, torch.nn.Module]], list[torch.nn.Module]]:
    """The checkpoint at `path` loaded into a shadow of `model`: each live layer it has tensors
    for, with its shadow; and every shadow layer. Reads the live model, never writes it."""
    if not os.path.isdir(path):  # else vLLM's loader takes it for a hub name and retries
        raise FileNotFoundError(f"no checkpoint directory at {path}")
    shadow, pairs = _shadow(model)
    shadows = [layer for _, layer in pairs]
    try:
        return _load(shadow, pairs, vllm_config, path), shadows
    except BaseException:
        _clear(shadows)
        raise


def _load(
    shadow: torch.nn.Module,
    pairs: list[tuple[torch.nn.Module, torch.nn.Module]],
    vllm_config: Any,
    path: str,
) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
    model_config = copy.copy(vllm_config.model_config)  # the live config keeps its path
    model_config.model, model_config.model_weights, model_config.revision = path, "", None
    weights = get_model_loader(vllm_config.load_config).get_all_weights(model_config, shadow)
    with torch.no_grad():
        loaded_names = shadow.load_weights(weights)
    tensors = dict(shadow.named_parameters()) | dict(shadow.named_buffers())
    # tied weights are one tensor under several names: named_parameters lists it once
    params = dict(shadow.named_parameters())
    missing = sorted(set(params) - set(loaded_names))
    if missing:
        raise ValueError(
            f"{path} has no tensors for {len(missing)} parameters of the served model: "
            f"{', '.join(missing[:5])}"
        )
    # a loader that returns without copying leaves the NaN the shadow was filled with
    unfilled = [n for n, p in params.items() if p.is_floating_point() and p.isnan().any()]
    if unfilled:
        raise ValueError(
            f"loading {path} left {len(unfilled)} parameters unfilled (or NaN in the "
            f"checkpoint): {', '.join(unfilled[:5])}"
        )
    loaded = {id(tensors[name]) for name in loaded_names if name in tensors}
    pending = []
    for live, layer in pairs:
        own = {**layer._parameters, **layer._buffers}
        if not any(id(t) in loaded for t in own.values() if t is not None):
            continue  # nothing of this layer is in a checkpoint (rotary cache): keep it
        if is_deferred_attention_layer(layer):
            raise ValueError(f"{path} carries attention tensors: stage-and-flip cannot load them")
        pending.append((live, layer))
    return pending


def _release(stage: Stage) -> None:
    """Free a dropped stage's memory now: its tensors' weight loaders are bound to its shadow
    layers, which hold the tensors, and such cycles wait for a full garbage collection (five
    discarded stages of a 0.5B model got the engine killed for memory)."""
    _clear(stage.shadows)
    stage.shadows, stage.pending, stage.layers, stage.staged = [], None, [], None


def _clear(layers: list[torch.nn.Module]) -> None:
    for layer in layers:
        layer._parameters.clear()
        layer._buffers.clear()
        layer._modules.clear()


def _pack(stage: Stage, budget_s: float) -> None:
    """Process the loaded layers (the CPU backend packs their GEMMs) for up to `budget_s`, on
    the engine's own thread, between two of its steps.

    Not on the stage's thread: vLLM's CPU packing (`create_onednn_mm`) and the forward pass
    share oneDNN, not documented as safe to use from two threads at once, and an engine whose
    stage thread packed while it served stalled for minutes once (0.5B model, under load; the
    thread also held the GIL over its copies then, so the cause is not pinned down).
    Sliced, so that each call holds generation briefly (one large layer: longer)."""
    assert stage.pending is not None
    deadline = time.perf_counter() + budget_s
    stage.slices += 1
    while stage.pending and time.perf_counter() < deadline:
        live, layer = stage.pending.pop(0)
        before = dict(layer.__dict__)
        quant_method = getattr(layer, "quant_method", None)
        if isinstance(quant_method, QuantizeMethodBase):
            quant_method.process_weights_after_loading(layer)
        stage.layers.append(_layer_flip(live, layer, before))
    if not stage.pending:
        _dedupe_copies(stage.layers)
        nbytes = sum(staged.nbytes for flip in stage.layers for _, staged in flip.copies)
        seconds = time.perf_counter() - stage.started
        stage.staged = Staged(stage.path, stage.layers, seconds, nbytes)
        logger.info(
            "staged %s in %.2fs: loaded in %.2fs, then packed in %d slices between steps",
            stage.path, seconds, stage.loaded_s, stage.slices,
        )  # fmt: skip


def _shadow(
    model: torch.nn.Module,
) -> tuple[torch.nn.Module, list[tuple[torch.nn.Module, torch.nn.Module]]]:
    """A copy of the module tree whose parameters and buffers are fresh tensors in the model's
    load format (vLLM recorded it at start-up for its own reloads), with their weight loaders;
    a tensor shared by several live layers (tied embeddings) is one shadow tensor too. Other
    attributes are shared with the live layers, read-only."""
    layers: dict[int, torch.nn.Module] = {}
    tensors: dict[int, torch.Tensor] = {}
    pairs: list[tuple[torch.nn.Module, torch.nn.Module]] = []
    pin = torch.cuda.is_available()  # staged on the host, pinned: the flip copies at full speed

    def fresh(live: torch.Tensor | None, form: torch.Tensor, layer: torch.nn.Module) -> Any:
        if live is not None and id(live) in tensors:
            return tensors[id(live)]
        tensor = torch.empty_strided(
            tuple(form.size()),
            tuple(form.stride()),
            dtype=form.dtype,
            device="cpu",
            pin_memory=pin,
        )
        if tensor.is_floating_point():
            tensor.fill_(float("nan"))  # what a loader did not fill shows
        tensor.__class__ = form.__class__
        tensor.__dict__ = {k: _unwrapped(_bound_to(v, layer)) for k, v in form.__dict__.items()}
        if live is not None:
            tensors[id(live)] = tensor
        return tensor

    def clone(live: torch.nn.Module) -> torch.nn.Module:
        if id(live) in layers:
            return layers[id(live)]
        layer = object.__new__(type(live))
        layer.__dict__ = {k: v for k, v in live.__dict__.items() if k not in MODULE_STATE}
        layer._parameters, layer._buffers, layer._modules = {}, {}, {}
        layer._non_persistent_buffers_set = set(live._non_persistent_buffers_set)
        layers[id(live)] = layer
        pairs.append((live, layer))
        info = LAYERWISE_INFO.get(live)
        params, buffers = info.restore_metadata if info is not None else ({}, {})
        for name, form in params.items():
            layer._parameters[name] = fresh(live._parameters.get(name), form, layer)
        for name, form in buffers.items():
            layer._buffers[name] = fresh(live._buffers.get(name), form, layer)
        # tensors vLLM does not record (a bias, built after the weights): shaped like the live
        for name, tensor in live._parameters.items():
            if tensor is not None and name not in params and name not in SKIP_LOAD_TENSORS:
                layer._parameters[name] = fresh(tensor, tensor, layer)
        for name, child in live._modules.items():
            layer._modules[name] = None if child is None else clone(child)
        return layer

    return clone(model), pairs


def _bound_to(value: Any, layer: torch.nn.Module) -> Any:
    """A weight loader vLLM recorded unbound (`sanitize_layer_refs`) bound to `layer`; vLLM's
    `restore_layer_refs` would rebind the recorded one in place, and its own reloads use it."""
    if isinstance(value, MethodType) and value.__self__ is layer_ref_sentinel:
        return value.__func__.__get__(layer)
    return value


def _unwrapped(value: Any) -> Any:
    """A weight loader without the wrappers a vLLM reload leaves on the recorded tensors.

    # NOTE: vLLM's layerwise reload wraps the loaders of the recorded tensors in
    # `online_process_loader`s bound to the live layer's reload state, and never unwraps those
    # (only the materialized copies): called after a reload, such a loader finds no reload in
    # progress and returns without copying anything, and the stage would flip in garbage."""
    while callable(value) and getattr(value, "__name__", "") == "online_process_loader":
        value = value.__wrapped__
    return value


def _layer_flip(live: torch.nn.Module, layer: torch.nn.Module, before: dict[str, Any]) -> LayerFlip:
    copies = []
    for name, staged in {**layer._parameters, **layer._buffers}.items():
        target = getattr(live, name, None)
        if staged is None or target is None or staged.numel() == 0 == target.numel():
            continue  # a GEMM packed away: its weight now lives in `cpu_linear`
        if target.shape != staged.shape:
            raise ValueError(
                f"{type(live).__name__}.{name}: staged {list(staged.shape)} does not fit the "
                f"engine's {list(target.shape)}"
            )
        copies.append((target.data, staged))
    attributes = {
        name: value
        for name, value in layer.__dict__.items()
        if name not in MODULE_STATE and (name not in before or before[name] is not value)
    }
    return LayerFlip(live, copies, attributes)


def _dedupe_copies(layers: list[LayerFlip]) -> None:
    """A tied tensor is reached from each layer that holds it: copy it once."""
    seen: set[int] = set()
    for flip in layers:
        kept = []
        for live, staged in flip.copies:
            if live.data_ptr() not in seen:
                seen.add(live.data_ptr())
                kept.append((live, staged))
        flip.copies = kept
