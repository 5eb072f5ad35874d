"""The vLLM command line and environment `gvloop agent-a engine` runs, on each build."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_a.settings import EngineSettings
from agent_a.vllm_command import (
    WORKER_EXTENSION,
    PublicBindError,
    check_bind_host,
    engine_command,
)
from gvloop.stack import engine_component


def settings(**fields: object) -> EngineSettings:
    return EngineSettings(_env_file=None, **fields)  # type: ignore[call-arg]


def option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


class TestEngineCommand:
    def test_cpu_defaults(self, tmp_path: Path) -> None:
        argv, env = engine_command(str(tmp_path), settings(kv_cache_gib=2), cpu=True)
        assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
        assert option(argv, "--model") == str(tmp_path)
        # clients send a name, not a filesystem path
        assert option(argv, "--served-model-name") == tmp_path.name
        assert (option(argv, "--host"), option(argv, "--port")) == ("127.0.0.1", "8000")
        assert option(argv, "--worker-extension-cls") == WORKER_EXTENSION
        assert "--enforce-eager" in argv  # minutes of torch.compile saved on a CPU
        # vLLM 0.32's CPU build dies on a seeded request whose prefill is split
        assert "--no-enable-chunked-prefill" in argv
        # the control routes, offline loading of a local directory, KV cache in GiB
        assert env == {
            "VLLM_SERVER_DEV_MODE": "1",
            "HF_HUB_OFFLINE": "1",
            "VLLM_CPU_KVCACHE_SPACE": "2",
        }
        assert "--kv-cache-memory-bytes" not in argv

    def test_cuda_maps_the_same_settings_to_flags(self) -> None:
        argv, env = engine_command(
            "org/model", settings(kv_cache_gib=2, gpu_memory_utilization=0.5), cpu=False
        )
        assert "--enforce-eager" not in argv  # compiled: faster decoding on a GPU
        assert "--no-enable-chunked-prefill" not in argv
        assert option(argv, "--kv-cache-memory-bytes") == str(2 * 2**30)
        assert option(argv, "--gpu-memory-utilization") == "0.5"
        assert env == {"VLLM_SERVER_DEV_MODE": "1"}  # a hub name may need the network
        assert option(argv, "--served-model-name") == "org/model"

    def test_a_chosen_name(self, tmp_path: Path) -> None:
        argv, _ = engine_command(str(tmp_path), settings(), cpu=True, name="my-model")
        assert option(argv, "--served-model-name") == "my-model"

    def test_explicit_options_and_extra_args(self, tmp_path: Path) -> None:
        argv, _ = engine_command(
            str(tmp_path),
            settings(
                dtype="float32",
                max_model_len=1024,
                enforce_eager=False,
                chunked_prefill=True,
                extra_args=["--max-num-seqs", "8"],
            ),
            cpu=True,
        )
        assert (option(argv, "--dtype"), option(argv, "--max-model-len")) == ("float32", "1024")
        assert "--enforce-eager" not in argv
        assert "--no-enable-chunked-prefill" not in argv
        assert argv[-2:] == ["--max-num-seqs", "8"]

    @pytest.mark.parametrize(
        ("fields", "cpu", "model_len"),
        [
            # without chunked prefill a prompt is one step: the context is capped to fit it
            ({}, True, "512"),
            ({"max_model_len": 256}, True, "256"),
            ({"max_model_len": 4096}, True, "512"),
            # with chunked prefill a long prompt takes several steps: no cap
            ({}, False, None),
            ({"chunked_prefill": True}, True, None),
        ],
    )
    def test_a_bounded_engine_step(
        self, tmp_path: Path, fields: dict[str, object], cpu: bool, model_len: str | None
    ) -> None:
        bounded = settings(max_num_batched_tokens=512, **fields)
        argv, _ = engine_command(str(tmp_path), bounded, cpu=cpu)
        assert option(argv, "--max-num-batched-tokens") == "512"
        assert option(argv, "--max-model-len") == model_len
        unbounded, _ = engine_command(str(tmp_path), settings(), cpu=cpu)
        assert "--max-num-batched-tokens" not in unbounded

    def test_component_polls_loopback_when_bound_to_all(self, tmp_path: Path) -> None:
        component = engine_component(str(tmp_path), settings(host="0.0.0.0", port=9001))
        assert component.health_url == "http://127.0.0.1:9001/health"


class TestBindHost:
    @pytest.mark.parametrize("host", ["127.0.0.1", "::1", "10.0.0.5", "192.168.1.2", "engine"])
    def test_private_addresses_and_names_pass(self, host: str) -> None:
        check_bind_host(host)

    def test_all_interfaces_passes_with_a_warning(self, caplog: pytest.LogCaptureFixture) -> None:
        check_bind_host("0.0.0.0")  # what a container needs; compose keeps the port private
        assert "never publish it" in caplog.text

    def test_public_address_is_refused(self) -> None:
        with pytest.raises(PublicBindError, match="take no API key"):
            check_bind_host("8.8.8.8")
