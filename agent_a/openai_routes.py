"""OpenAI-compatible routes on the generator: GET /v1/models and POST /v1/chat/completions,
plain and streamed, forwarded to the engines. An application written against the OpenAI API
points its base URL here and its traffic goes through the loop; a request that carries a
reference answer is also verified and queued for training, like POST /problems.

Errors on these routes come in OpenAI's shape (`{"error": {"message", "type", ...}}`), so the
official clients raise their usual exceptions, with the message."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute

from agent_a.deps import MetricsDep, ServiceDep, require_token
from agent_a.engine_pool import ChatStream
from agent_a.errors import AgentAError, InvalidRequestError, ModelNotFoundError
from agent_a.generation import Completion, Generator, Prompt, sampled_logprobs
from agent_a.openai_schemas import (
    ChatCompletionRequest,
    GvloopExtension,
    LearnedSample,
    ModelCard,
    ModelList,
    OpenAIErrorResponse,
)
from services.schemas import ProblemIn, new_id, utcnow
from services.server import APIError

logger = logging.getLogger(__name__)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def openai_error(
    status: int, message: str, headers: dict[str, str] | None = None, param: str | None = None
) -> JSONResponse:
    body = {"error": {"message": message, "type": ERROR_TYPES.get(status, "api_error")}}
    if param is not None:
        body["error"]["param"] = param
    return JSONResponse(body, status_code=status, headers=headers)


def describe(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """Pydantic's errors as one message, and the first offending parameter."""
    parts, params = [], []
    for error in errors:
        loc = [str(p) for p in error.get("loc", ()) if p != "body"]
        params.append(".".join(loc) or None)
        parts.append(f"{'.'.join(loc) or 'body'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts), params[0] if params else None


class OpenAIRoute(APIRoute):
    """Answers every error of its routes in OpenAI's shape: validation (400, as OpenAI does),
    auth (401), gvloop's own (their status), and JSON the parser cannot take."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                message, param = describe(list(exc.errors()))
                return openai_error(400, message, param=param)
            except HTTPException as exc:
                return openai_error(exc.status_code, str(exc.detail), exc.headers)
            except APIError as exc:
                status = 400 if exc.status_code == 422 else exc.status_code
                return openai_error(status, exc.detail, exc.headers)
            except RecursionError:
                return openai_error(400, "JSON nested too deeply")
            except UnicodeDecodeError:
                return openai_error(400, "request body is not valid UTF-8")

        return route


router = APIRouter(
    prefix="/v1",
    dependencies=[Depends(require_token)],
    route_class=OpenAIRoute,
    tags=["openai"],
    responses={
        "4XX": {"model": OpenAIErrorResponse},
        "5XX": {"model": OpenAIErrorResponse},
    },
)


@router.get("/models")
async def list_models(service: ServiceDep) -> ModelList:
    """The one model the engines serve, with the weight version being served."""
    pool = service.pool
    card = ModelCard(
        id=pool.model,
        created=int(time.time()),
        root=pool.model,  # the served name: no client needs a path on this host
        weight_version=service.swapper.weights.version,
    )
    return ModelList(data=[card])


@router.post(
    "/chat/completions",
    response_model=None,
    responses={200: {"description": "OpenAI's chat.completion (or its chunks, streamed)."}},
)
async def create_chat_completion(
    body: ChatCompletionRequest, service: ServiceDep, metrics: MetricsDep
) -> Response:
    """A chat completion from the engines, `system_fingerprint` naming the weight version
    (`gvloop-v<N>`) and `gvloop.weight_version` giving it as a number. With `reference_answer`
    each choice is verified and queued, its verdict under `gvloop.samples`; the queue's
    backpressure then applies (429 with Retry-After)."""
    generator = service.generator
    if body.model != service.pool.model:
        raise ModelNotFoundError(
            f"the model {body.model!r} does not exist here: this generator serves "
            f"{service.pool.model!r}"
        )
    learning = body.reference_answer is not None
    if learning and body.n > generator.settings.max_samples_per_request:
        raise InvalidRequestError(
            f"n={body.n} is over the limit of {generator.settings.max_samples_per_request} samples"
        )
    chat = Chat(generator, body)
    # Held until the answer is sent, streamed or not: the queue's room for the samples, and the
    # engine's stream, opened here so that a refusal still gets its own status
    held = contextlib.AsyncExitStack()
    try:
        if learning:
            await held.enter_async_context(generator.reserve(body.n))
        if body.stream:
            stream = await held.enter_async_context(generator.stream_chat(chat.body))
            response: Response = StreamingResponse(
                chat.relay(stream, held), media_type="text/event-stream"
            )
        else:
            async with held:
                response = JSONResponse(await chat.complete())
    except AgentAError as exc:
        await held.aclose()
        metrics.chat_requests.labels(str(exc.status_code)).inc()
        raise
    metrics.chat_requests.labels("learned" if learning else "ok").inc()
    return response


class Chat:
    """One OpenAI chat request through the generator: forwarded, and learned from when it
    carries a reference answer."""

    def __init__(self, generator: Generator, request: ChatCompletionRequest) -> None:
        self.generator = generator
        self.request = request
        self.body = request.engine_body(generator.pool.model)
        self.prompt: Prompt | None = None
        if request.reference_answer is not None:
            messages = [m.as_chat_message() for m in request.messages]
            problem = ProblemIn(
                problem=messages[-1].content, reference_answer=request.reference_answer
            )
            self.prompt = Prompt(problem, new_id(), messages, request.sampling)
        self.created = utcnow()

    async def complete(self) -> dict[str, Any]:
        answer, version = await self.generator.chat(self.body)
        samples = None
        if self.prompt is not None:
            prompt_ids = answer.pop("prompt_token_ids", None)
            completions = []
            for choice in sorted(answer["choices"], key=lambda c: c["index"]):
                text = choice["message"]["content"] or ""
                token_ids = choice.pop("token_ids", None) or []
                logprobs = self._take_logprobs(choice)
                completions.append(
                    Completion(text, token_ids, logprobs, choice.get("finish_reason"))
                )
            samples = await self._learn(prompt_ids, completions, version)
        return self._stamp(answer, version, samples)

    async def relay(
        self, stream: ChatStream, held: contextlib.AsyncExitStack
    ) -> AsyncIterator[str]:
        """The engine's chunks as they come; with a reference answer, one more chunk (no
        choices) carries each choice's verdict once the samples are verified and queued.

        A failure after the first byte cannot change the status any more: it comes as an
        error event, which the OpenAI clients raise."""
        async with held:
            try:
                async for event in self._events(stream, held):
                    yield f"data: {json.dumps(event)}\n\n"
            except AgentAError as exc:
                logger.warning("streamed chat completion failed: %s", exc.detail)
                kind = ERROR_TYPES.get(exc.status_code, "api_error")
                yield f"data: {json.dumps({'error': {'message': exc.detail, 'type': kind}})}\n\n"
            yield "data: [DONE]\n\n"

    async def _events(
        self, stream: ChatStream, held: contextlib.AsyncExitStack
    ) -> AsyncIterator[dict[str, Any]]:
        texts: dict[int, list[str]] = {}
        token_ids: dict[int, list[int]] = {}
        logprobs: dict[int, list[float]] = {}
        finish: dict[int, str | None] = {}
        prompt_ids = None
        last: dict[str, Any] = {}
        async for chunk in stream.chunks():
            prompt_ids = chunk.pop("prompt_token_ids", None) or prompt_ids
            for choice in chunk.get("choices", ()):
                index = choice["index"]
                texts.setdefault(index, []).append(choice["delta"].get("content") or "")
                token_ids.setdefault(index, []).extend(choice.pop("token_ids", None) or [])
                if self.prompt is not None:
                    logprobs.setdefault(index, []).extend(self._take_logprobs(choice) or [])
                finish[index] = choice.get("finish_reason") or finish.get(index)
            last = chunk
            yield self._stamp(chunk, stream.version, None)
        version = await stream.final_version()
        if self.prompt is None:
            return
        completions = [
            Completion("".join(texts[i]), token_ids[i], logprobs[i], finish[i])
            for i in sorted(texts)
        ]
        samples = await self._learn(prompt_ids, completions, version)
        final = {key: last.get(key) for key in ("id", "object", "created", "model")}
        yield self._stamp({**final, "choices": []}, version, samples)

    async def _learn(
        self, prompt_ids: list[int] | None, completions: list[Completion], version: int
    ) -> list[LearnedSample]:
        assert self.prompt is not None
        solutions = await self.generator.verify_and_queue(
            self.prompt, prompt_ids, completions, version, self.created
        )
        return [
            LearnedSample(
                index=i,
                sample_id=s.sample_id,
                feedback=s.feedback,
                queued=s.queued,
                queue_id=s.queue_id,
            )
            for i, s in enumerate(solutions)
        ]

    def _take_logprobs(self, choice: dict[str, Any]) -> list[float] | None:
        """A learned choice's log-probabilities, left in the answer only if the client asked."""
        logprobs = sampled_logprobs(choice)
        if not self.request.logprobs:
            choice["logprobs"] = None
        return logprobs

    @staticmethod
    def _stamp(
        answer: dict[str, Any], version: int, samples: list[LearnedSample] | None
    ) -> dict[str, Any]:
        """The engine's answer (or chunk), naming the weights that produced it."""
        extension = GvloopExtension(weight_version=version, samples=samples)
        return {
            **answer,
            "system_fingerprint": f"gvloop-v{version}",
            "gvloop": extension.model_dump(mode="json", exclude_none=True),
        }
