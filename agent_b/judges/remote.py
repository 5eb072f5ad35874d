"""The judge on an OpenAI-compatible server (vLLM, SGLang, ...), for judges too big for here.

Each question is a chat completion of one token with `top_logprobs`; the server applies the
judge's chat template and batches concurrent requests itself, so this side only bounds how
many are in flight.

Self-verification: pointed at agent A's own vLLM engine, the judge is the model being trained
and follows every hot swap. Such an engine reports the weight version it serves (GET
/weight_info, a route of vLLM's dev mode, which gvloop's engines run in), and each verdict
reports the version that gave it (`judge_version`); a server without that route reports none.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import httpx
from pydantic import BaseModel, ValidationError

from agent_b.errors import JudgeUnavailableError
from agent_b.judges.base import (
    NO_WORDS,
    YES_WORDS,
    Judge,
    JudgeQuery,
    judge_messages,
    p_yes_from_logprobs,
)
from services.clients import (
    RetryPolicy,
    ServiceError,
    ServiceUnavailableError,
    bearer,
    parse,
    request_with_retry,
)

if TYPE_CHECKING:
    from agent_b.settings import VerifierSettings

logger = logging.getLogger(__name__)

TOP_LOGPROBS = 20  # vLLM's default cap (--max-logprobs)
BASE_VERSION = "default"  # what vLLM reports before any update_weight_version: gvloop's 0
# How long load() waits for the server to list its models: about 15 minutes, the engine's own
# start period in docker-compose.yml, since an engine started beside the verifier (compose, or
# self-verification) may still be loading its model.
LOAD_POLICY = RetryPolicy(attempts=40, max_backoff_s=30)


# The parts of OpenAI's responses read here; anything else they carry is ignored.
class ModelCard(BaseModel):
    id: str


class ModelList(BaseModel):
    data: list[ModelCard]


class TopLogprob(BaseModel):
    token: str
    logprob: float


class TokenLogprobs(BaseModel):
    top_logprobs: list[TopLogprob] = []


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobs] | None = None


class Choice(BaseModel):
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(BaseModel):
    choices: list[Choice]


class WeightInfo(BaseModel):  # vLLM's GET /weight_info
    weight_version: str | None = None


def parse_version(raw: str | None) -> int | None:
    """vLLM's weight version string as gvloop's int (as agent_a.engine_pool reads it); None
    for one that is not a gvloop version."""
    if raw == BASE_VERSION:
        return 0
    return int(raw) if raw is not None and raw.isdigit() else None


class OpenAIJudge(Judge):
    what = "remote judge"

    def __init__(self, settings: VerifierSettings) -> None:
        assert settings.judge_url is not None
        self.settings = settings
        self.name = settings.judge_model or "(first model served)"
        self.url = settings.judge_url.rstrip("/")
        self.http = httpx.AsyncClient(
            base_url=self.url,
            headers=bearer(settings.judge_api_key),
            timeout=settings.judge_timeout_s,
        )
        self.policy = RetryPolicy(attempts=3)
        self._in_flight = asyncio.Semaphore(settings.max_batch_size)
        self.versioned = False
        """Whether the server reports its weight version (a gvloop engine)."""

    async def load(self) -> None:
        """Wait until the server lists its models; pick the judge among them."""
        response = await request_with_retry(
            self.http,
            "GET",
            "/v1/models",
            what=self.what,
            policy=LOAD_POLICY,
        )
        served = [card.id for card in parse(response, ModelList, self.what).data]
        if self.settings.judge_model is None and served:
            self.name = served[0]
        elif self.settings.judge_model not in served:
            raise JudgeUnavailableError(f"{self.url} does not serve {self.name!r}: {served}")
        try:
            version = await self._read_version()
        except (ServiceError, ValidationError):
            version = None  # another kind of server, whose answer means something else
        self.versioned = version is not None
        self.ready = True
        logger.info(
            "judge ready: %s at %s, %s",
            self.name,
            self.url,
            f"weight version {version}" if self.versioned else "which reports no weight version",
        )

    async def _read_version(self) -> int | None:
        """The server's weight version; None when it has no such route or another kind."""
        response = await request_with_retry(
            self.http, "GET", "/weight_info", what=self.what, policy=self.policy
        )
        if response.status_code == 404:
            return None
        return parse_version(parse(response, WeightInfo, self.what).weight_version)

    async def weight_version(self) -> int | None:
        if not self.versioned:
            return None
        try:
            version = await self._read_version()
        except (ServiceUnavailableError, ServiceError, ValidationError) as exc:
            raise JudgeUnavailableError(f"the judge's weight version: {exc}") from exc
        if version is None:
            raise JudgeUnavailableError(f"{self.url} no longer reports a weight version")
        return version

    async def p_yes(self, query: JudgeQuery) -> float:
        body = {
            "model": self.name,
            "messages": judge_messages(query, self.settings.max_prompt_tokens),
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": True,
            "top_logprobs": TOP_LOGPROBS,
        }
        async with self._in_flight:
            try:
                response = await request_with_retry(
                    self.http,
                    "POST",
                    "/v1/chat/completions",
                    what=self.what,
                    policy=self.policy,
                    json=body,
                )
                completion = parse(response, ChatCompletion, self.what)
            except (ServiceUnavailableError, ServiceError, ValidationError) as exc:
                raise JudgeUnavailableError(str(exc)) from exc
        logprobs = completion.choices[0].logprobs if completion.choices else None
        first = logprobs.content[0].top_logprobs if logprobs and logprobs.content else []
        return p_yes_from_logprobs(
            [c.logprob for c in first if c.token.strip() in YES_WORDS],
            [c.logprob for c in first if c.token.strip() in NO_WORDS],
        )

    async def aclose(self) -> None:
        await self.http.aclose()
