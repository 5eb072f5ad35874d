"""Settings of the verifier service (agent B), read from `GVLOOP_VERIFIER_*` variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings

from services.model_files import resolve_model
from services.settings import CommonSettings, env_config

RewardField = Literal["combined", "solution_score", "reasoning_score", "is_correct"]


class VerifierSettings(BaseSettings):
    model_config = env_config("GVLOOP_VERIFIER_")

    host: str = "127.0.0.1"
    """Address to listen on; 0.0.0.0 only behind a network you trust (and with a token)."""
    port: int = Field(default=8002, ge=1, le=65535)
    """Port to listen on."""
    api_token: str | None = None
    """Bearer token required on /verify, /verify/batch and /get_reward; unset: open."""
    judge_model: str | None = None
    """Judge model: an HF causal LM directory or hub name (local backend), or the served model
    name (openai backend). Unset: GVLOOP_MODEL, i.e. the same model agent A serves (local), or
    the first model the remote server lists (openai)."""
    judge_backend: Literal["local", "openai"] = "local"
    """local: transformers in this process; openai: an OpenAI-compatible server (e.g. vLLM)."""
    judge_url: str | None = None
    """Base URL of the OpenAI-compatible judge server (openai backend), e.g. http://gpu:8000."""
    judge_api_key: str | None = None
    """Bearer token for the remote judge server, if it wants one."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the local judge runs; auto: cuda when available."""
    threads: int | None = Field(default=None, ge=1)
    """CPU threads of the local judge (torch.set_num_threads); unset: torch's default, every
    core. 1 avoids thread thrashing when other busy processes share a few cores."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Local judge weights; auto: bfloat16 on cuda, float32 on cpu (bf16 matmuls are slow on
    most CPUs)."""
    max_batch_size: int = Field(default=16, ge=1, le=512)
    """Most judge prompts in one forward pass (local) or in flight at once (openai)."""
    max_wait_ms: float = Field(default=5.0, ge=0, le=10_000)
    """How long the first prompt of a batch waits for others to join it."""
    max_queued_prompts: int = Field(default=2048, ge=1)
    """Judge prompts that may wait; beyond this requests get 503 with Retry-After."""
    max_prompt_tokens: int = Field(default=1024, ge=64)
    """Longer judge prompts lose the middle of the solution (the answer sits at its end)."""
    judge_timeout_s: float = Field(default=120.0, gt=0)
    """Deadline for one judge answer, queueing included; past it the request gets 503."""
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    """is_correct from the judge, p(Yes) >= threshold, and from a verifier function that
    returns one number, score >= threshold."""
    function: str | None = None
    """Your own verifier function, `my_pkg.checks:score` or `/path/checks.py:score`, called as
    `score(problem, solution, reference_answer, **fields)` in the rule workers, returning a
    number in [0, 1] or solution_score, reasoning_score and is_correct
    (`agent_b/functions.py`). Set, it decides every request of method auto; unset: the rules
    and the judge do."""
    judge_reasoning: bool = False
    """Also ask the judge about the steps when a reference answer decides correctness (method
    auto; the judge is always asked without a reference). Off by default: a judge as small as
    the default model verifies barely better than chance, and on a CPU its forward pass costs
    about as much as generating the sample. Turn it on with a judge that can verify."""
    rule_workers: int = Field(default=2, ge=1, le=64)
    """Processes running math-verify (its signal-based timeouts need a main thread) and the
    verifier function."""
    rule_timeout_s: float = Field(default=10.0, gt=0)
    """Hard deadline for one answer comparison or verifier function call; the worker is
    killed past it."""
    max_body_bytes: int = Field(default=4_000_000, ge=1024)
    """Larger request bodies get 413 (a full batch of 256 long items is about 2 MB)."""
    reward_field: RewardField = "combined"
    """The reward POST /get_reward answers (OpenRLHF), and the default of agent_b/rewards.py's
    adapters: combined, S = (solution_score + reasoning_score) / 2 as in the loss; one of the
    two scores; or is_correct as 0/1."""

    @model_validator(mode="after")
    def _remote_needs_url(self) -> VerifierSettings:
        if self.judge_backend == "openai" and not self.judge_url:
            raise ValueError("judge_backend 'openai' needs judge_url (GVLOOP_VERIFIER_JUDGE_URL)")
        return self

    def resolved_judge_model(self) -> str:
        """The local judge to load: the setting, or the model agent A serves."""
        common = CommonSettings()
        return resolve_model(self.judge_model or common.model, common.data_dir)
