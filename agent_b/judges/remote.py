"""The judge on an OpenAI-compatible server (vLLM, SGLang, ...), for judges too big for here.

Each question is a chat completion of one token with `top_logprobs`; the server applies the
judge's chat template and batches concurrent requests itself, so this side only bounds how
many are in flight.
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

    async def load(self) -> None:
        """Wait until the server lists its models; pick the judge among them."""
        response = await request_with_retry(
            self.http,
            "GET",
            "/v1/models",
            what=self.what,
            policy=RetryPolicy(attempts=10, max_backoff_s=30),
        )
        served = [card.id for card in parse(response, ModelList, self.what).data]
        if self.settings.judge_model is None and served:
            self.name = served[0]
        elif self.settings.judge_model not in served:
            raise JudgeUnavailableError(f"{self.url} does not serve {self.name!r}: {served}")
        self.ready = True
        logger.info("judge ready: %s at %s", self.name, self.url)

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
