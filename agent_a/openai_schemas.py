"""The bodies of the generator's OpenAI-compatible routes (`/v1/models`, `/v1/chat/completions`):
the subset of OpenAI's chat API that a vLLM engine serves, plus gvloop's one extension,
`reference_answer`, which makes the completion a training sample.

Requests are strict: a field gvloop does not support (tools, images, ...) is a 400 that names
it, not silently dropped. Responses are the engine's own, with the weight version added."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.schemas import (
    MAX_TEXT_CHARS,
    ChatMessage,
    OptionalText,
    SamplingParams,
    Strict,
    VerifyResponse,
)

MAX_MESSAGES = 256
MAX_COMPLETION_TOKENS = 4096
"""Also the default: the engine cuts it to what the context leaves after the prompt."""


class TextPart(Strict):
    type: Literal["text"]
    text: Annotated[str, Field(max_length=MAX_TEXT_CHARS)]


class OpenAIMessage(Strict):
    role: Literal["developer", "system", "user", "assistant"]
    content: Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | list[TextPart]
    name: str | None = Field(default=None, max_length=64)

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def as_chat_message(self) -> ChatMessage:
        # developer is OpenAI's newer name for system; chat templates know only system
        role = "system" if self.role == "developer" else self.role
        return ChatMessage(role=role, content=self.text)


class StreamOptions(Strict):
    include_usage: bool = False


class ChatCompletionRequest(Strict):
    model: str = Field(min_length=1, max_length=256)
    messages: Annotated[list[OpenAIMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    temperature: float = Field(default=1.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    n: int = Field(default=1, ge=1, le=16)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_COMPLETION_TOKENS)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_COMPLETION_TOKENS)
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: int | None = Field(default=None, ge=0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    user: str | None = Field(default=None, max_length=256, description="Accepted, not used.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    reference_answer: OptionalText = Field(
        description=(
            "gvloop's extension: the expected final answer. The completion is then verified and "
            "queued for training, like POST /problems, and its feedback comes back under `gvloop`."
        ),
    )

    @model_validator(mode="after")
    def _learnable(self) -> ChatCompletionRequest:
        if self.reference_answer is not None and self.messages[-1].role != "user":
            raise ValueError(
                "with reference_answer the last message must be the user's problem "
                f"(it is {self.messages[-1].role!r})"
            )
        return self

    @property
    def completion_limit(self) -> int:
        return self.max_completion_tokens or self.max_tokens or MAX_COMPLETION_TOKENS

    @property
    def sampling(self) -> SamplingParams:
        """What a queued sample records of how it was drawn."""
        return SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.completion_limit,
            seed=self.seed,
        )

    def engine_body(self, model: str) -> dict[str, Any]:
        """The request as the engine takes it (token ids and their log-probabilities asked for
        when it will be learned)."""
        body = self.model_dump(
            exclude_none=True, exclude={"model", "max_tokens", "reference_answer", "user"}
        )
        body["messages"] = [m.as_chat_message().model_dump() for m in self.messages]
        body.update(model=model, max_completion_tokens=self.completion_limit)
        if self.reference_answer is not None:
            body.update(return_token_ids=True, logprobs=True)
        return body


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "gvloop"
    root: str
    weight_version: int = Field(description="gvloop's extension: the weights being served.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class LearnedSample(BaseModel):
    index: int = Field(description="The choice this sample is.")
    sample_id: str
    feedback: VerifyResponse
    queued: bool
    queue_id: str | None = Field(
        default=None,
        description="Its entry in the training stream (what the trainer's checkpoints commit). "
        "None: not queued, because the queue was full or Redis failed.",
    )


class GvloopExtension(BaseModel):
    """What a completion adds to OpenAI's shape, under the `gvloop` key."""

    weight_version: int
    samples: list[LearnedSample] | None = Field(
        default=None, description="With reference_answer: each choice's verdict and fate."
    )


class OpenAIError(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"description": "OpenAI's error shape."})

    error: OpenAIError
