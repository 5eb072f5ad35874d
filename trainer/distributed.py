"""The trainer as one torchrun job of N processes (ranks): PyTorch's process group, DDP or FSDP2
around the model, the collectives the loop needs, and the orders rank 0 gives the others.

Rank 0 is the job's only consumer of the stream: it gathers each batch as a single trainer would,
broadcasts it whole, and every rank trains on its shard (`trainer.batch.shard_batch`). Rank 0
alone keeps the ledger of stream ids, writes checkpoints (the full state dicts, gathered from
every rank), acknowledges after them and publishes swaps, so the exactly-once rules of
`trainer.intake` hold unchanged. The other ranks only follow orders. Every collective has the
process group's timeout: a rank that hangs or dies makes the others fail with an error (logged)
instead of waiting forever, and torchrun restarts the group (`--max-restarts`) from the newest
checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal, TypeVar

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from services.schemas import Sample
from trainer.settings import TrainerSettings

logger = logging.getLogger("trainer")

T = TypeVar("T")
Strategy = Literal["single", "ddp", "fsdp2"]
# Rank 0 gathers these; the others get empty dicts (cpu_offload: no rank holds two copies on
# the GPU)
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


@dataclass(frozen=True)
class Rank:
    """This process' place in the job."""

    rank: int
    world: int
    device: torch.device
    strategy: Strategy

    @property
    def leader(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class Order:
    """What rank 0 tells every rank to do next."""

    kind: Literal["step", "idle", "commit", "stop"]
    lr: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    """The whole batch, sorted by length; each rank takes its shard."""
    version: int = 0
    """The weight version of the model the step starts from (last checkpoint's)."""
    bonuses: list[float] | None = None
    """Each sample's exploration bonus (rank 0 reads the counts); None: no exploration."""


def setup_rank(cfg: TrainerSettings, device: torch.device) -> Rank:
    """Join torchrun's process group (gloo on the CPU, nccl on GPUs); a plain process, or a
    job of one, trains alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if not dist.is_torchelastic_launched() or world == 1:
        return Rank(0, 1, device, "single")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    timeout = timedelta(seconds=cfg.collective_timeout_s)
    store, rank_id, world = next(dist.rendezvous("env://", timeout=timeout))
    # torchrun's agent keeps one store across elastic restarts: without a prefix per attempt,
    # the restarted ranks read the dead ones' addresses and cannot connect
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        store=dist.PrefixStore(f"gvloop/attempt_{attempt}", store),
        rank=rank_id,
        world_size=world,
        timeout=timeout,
        # nccl binds each rank to its GPU at once rather than guessing it at the first collective
        device_id=device if device.type == "cuda" else None,
    )
    strategy = cfg.strategy
    if strategy == "auto":
        # FSDP2 shards weights, gradients and optimizer state across GPUs; a model small enough
        # to train on CPUs fits each process whole, and DDP is the simpler of the two
        strategy = "fsdp2" if device.type == "cuda" else "ddp"
    rank = Rank(dist.get_rank(), world, device, strategy)
    logger.info(
        "rank %d of %d on %s (%s, collective timeout %gs)",
        rank.rank, world, device, strategy, cfg.collective_timeout_s,
    )  # fmt: skip
    return rank


def wrap_model(model: torch.nn.Module, rank: Rank) -> torch.nn.Module:
    """The model as the ranks train it; build the optimizer on what this returns."""
    if rank.strategy == "ddp":
        ids = [rank.device.index] if rank.device.type == "cuda" else None
        # buffers (rotary tables) never change: broadcasting them in every forward would also
        # be a collective per micro-batch
        return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
    if rank.strategy == "fsdp2":
        # one FSDP unit per transformer block (HF names them), then the rest at the root
        blocks = set(getattr(model, "_no_split_modules", None) or [])
        for module in model.modules():
            if type(module).__name__ in blocks:
                fully_shard(module)
        fully_shard(model)
    return model


@contextlib.contextmanager
def gradient_sync(model: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Forward and backward within average the ranks' gradients only if `enabled`; else each
    rank accumulates its own (gradient accumulation over micro-batches)."""
    if isinstance(model, DistributedDataParallel) and not enabled:
        with model.no_sync():
            yield
    elif isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(enabled)
        yield
    else:
        yield


def all_ranks_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def full_norm(norm: torch.Tensor) -> torch.Tensor:
    """clip_grad_norm_'s total norm; under FSDP2 a sharded tensor, gathered."""
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def broadcast(order: T) -> T:
    """Rank 0's `order`, on every rank (a collective: every rank calls it)."""
    if not dist.is_initialized():
        return order
    box = [order]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def full_state_dicts(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model's and the optimizer's full state dicts, on the CPU, keyed by parameter name,
    on rank 0 (a collective: every rank calls it)."""
    return get_model_state_dict(model, options=FULL), get_optimizer_state_dict(
        model, optimizer, options=FULL
    )


def load_optimizer(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Load a full optimizer state dict saved by `full_state_dicts` into this rank's part."""
    if state["state"] and all(isinstance(k, int) for k in state["state"]):
        # a checkpoint from before the trainer ran on torchrun: keyed by parameter index
        optimizer.load_state_dict(state)
        return
    set_optimizer_state_dict(
        model, optimizer, state, options=StateDictOptions(full_state_dict=True)
    )


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
