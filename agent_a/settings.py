"""Settings of agent A: the vLLM engine (`GVLOOP_ENGINE_*`) and the generator API
(`GVLOOP_GENERATOR_*`). The model, the queue and the checkpoint root are shared settings
(`services.settings.CommonSettings`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings

from services.clients import RetryPolicy
from services.settings import env_config

PLACEHOLDER_TOKENS = frozenset({"changeme", "change-me", "secret", "token", "password"})


class EngineSettings(BaseSettings):
    model_config = env_config("GVLOOP_ENGINE_")

    host: str = "127.0.0.1"
    """Address vLLM listens on. Its port also carries the unauthenticated control routes (pause,
    reload, resume): loopback or a private network only, never published."""
    port: int = Field(default=8000, ge=1, le=65535)
    """Port of vLLM's OpenAI API and of the control routes."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights and activations; auto: float32 on the CPU build (bf16 is emulated, and slow, on
    most CPUs), the model config's dtype on CUDA."""
    max_model_len: int | None = Field(default=None, ge=16)
    """Longest prompt plus completion in tokens; unset: the model's own limit."""
    kv_cache_gib: int | None = Field(default=None, ge=1)
    """KV cache size in GiB (VLLM_CPU_KVCACHE_SPACE on the CPU build, --kv-cache-memory-bytes
    on CUDA); unset: 1 GiB on the CPU build, vLLM's default on CUDA."""
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    """CUDA only: share of the GPU vLLM may claim (lower it when the trainer shares the GPU)."""
    enforce_eager: bool | None = None
    """Skip torch.compile and CUDA graphs; unset: on for the CPU build (start-up in seconds
    instead of minutes), off on CUDA (faster decoding)."""
    chunked_prefill: bool | None = None
    """Split long prefills across steps; unset: off on the CPU build, where vLLM 0.32 kills the
    engine ("CPU Generator does not use offset") when a seeded request's prefill is split,
    on for CUDA."""
    max_num_batched_tokens: int | None = Field(default=None, ge=16)
    """Most tokens one engine step computes. A swap's pause waits for the step in flight, and
    a streaming client waits for every step, so this bounds both (a step of 100 prompts took
    3-4 s on 2 CPU cores). Without chunked prefill (the CPU build) a whole prompt must fit one
    step, so it caps prompt plus completion too (--max-model-len, unless max_model_len is
    lower). Unset: vLLM's default (on the CPU build, the model's whole context)."""
    extra_args: list[str] = []
    """More vLLM arguments, verbatim (JSON list), e.g. ["--max-num-seqs", "64"]."""
    start_timeout_s: float = Field(default=900.0, gt=0)
    """How long a started engine may take to answer /health before it counts as failed."""


class GeneratorSettings(BaseSettings):
    model_config = env_config("GVLOOP_GENERATOR_")

    host: str = "127.0.0.1"
    """Address the generator API listens on; 0.0.0.0 only with an api_token."""
    port: int = Field(default=8001, ge=1, le=65535)
    """Port the generator API listens on."""
    engine_urls: list[str] = Field(default=["http://127.0.0.1:8000"], min_length=1)
    """vLLM engines (JSON list): requests go to the least busy one, swaps go to all."""
    verifier_url: str = "http://127.0.0.1:8002"
    """Agent B, the verifier every sample is scored by before it is queued."""
    verifier_token: str | None = None
    """Bearer token agent B wants, if any."""
    api_token: str | None = None
    """Bearer token a client sends on /problems, /jobs and GET /weights; unset: open."""
    operator_token: str | None = None
    """Bearer token required on POST /weights (hot swaps: the trainer's), which the api_token
    does not open (403); it opens every other route too. Unset: the api_token guards POST
    /weights as well."""
    engine_timeout_s: float = Field(default=600.0, gt=0)
    """Deadline for one chat completion (n samples of one problem)."""
    verifier_timeout_s: float = Field(default=300.0, gt=0)
    """Deadline for one verification call (the n samples of one problem)."""
    control_timeout_s: float = Field(default=30.0, gt=0)
    """Deadline for each engine control call of a swap: pause, version, cache reset, resume."""
    reload_timeout_s: float = Field(default=600.0, gt=0)
    """Deadline for an engine to reload a checkpoint."""
    stage_headroom_gib: float = Field(default=1.0, ge=0)
    """Host memory a stage must leave free, beyond the staged copy of the weights; an engine
    short of it reloads inside the pause instead (a swap that stops generation longer, rather
    than an engine killed for memory)."""
    engine_wait_s: float = Field(default=900.0, gt=0)
    """At start-up, how long to wait for every engine to be healthy."""
    retry_attempts: int = Field(default=4, ge=1, le=20)
    """Tries for a call to an engine or the verifier that fails for a transient reason."""
    retry_backoff_s: float = Field(default=0.5, ge=0)
    """First wait between tries; it doubles each time (with jitter), up to 8 s."""
    max_in_flight_per_engine: int = Field(default=64, ge=1)
    """Chat requests one engine gets at once; more wait here (vLLM batches what it gets)."""
    max_samples_per_request: int = Field(default=1024, ge=1)
    """problems x n allowed in one POST /problems; more gets 422."""
    max_running_jobs: int = Field(default=16, ge=1)
    """Asynchronous jobs running at once; more gets 429."""
    job_ttl_s: int = Field(default=86_400, ge=60)
    """How long job results stay readable in Redis."""
    retry_after_s: int = Field(default=10, ge=1)
    """Retry-After sent with 429 when the sample queue is full."""
    max_body_bytes: int = Field(default=8_000_000, ge=1024)
    """Larger request bodies get 413 (256 problems with long reference answers fit)."""

    @field_validator("engine_urls", "verifier_url")
    @classmethod
    def _http_urls(cls, value: str | list[str]) -> str | list[str]:
        for url in [value] if isinstance(value, str) else value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} is not an http(s) URL")
        return value

    @field_validator("api_token", "operator_token", "verifier_token")
    @classmethod
    def _no_placeholder(cls, token: str | None) -> str | None:
        if token is not None and token.lower() in PLACEHOLDER_TOKENS:
            raise ValueError(f"{token!r} is a placeholder: set a real secret")
        return token

    @model_validator(mode="after")
    def _distinct_tokens(self) -> GeneratorSettings:
        if self.operator_token is not None and self.operator_token == self.api_token:
            raise ValueError(
                "operator_token equals api_token: a client could swap weights; set a distinct "
                "GVLOOP_GENERATOR_OPERATOR_TOKEN"
            )
        return self

    @property
    def retry(self) -> RetryPolicy:
        return RetryPolicy(attempts=self.retry_attempts, backoff_s=self.retry_backoff_s)
