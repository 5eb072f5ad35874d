"""Every model that crosses a service boundary: HTTP bodies and the queued sample.

Scores are finite floats in [0, 1] (NaN and inf are rejected at the boundary, so they never
reach the loss); text fields have length limits so a hostile client gets a 422, not an OOM.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

SCHEMA_VERSION = 2
MAX_TEXT_CHARS = 32_000
MAX_BATCH = 256

Score = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]
OptionalText = Annotated[str | None, Field(default=None, max_length=MAX_TEXT_CHARS)]
TokenId = Annotated[int, Field(ge=0)]
# vLLM reports a log-probability it cannot represent as -9999.0, never -inf
LogProb = Annotated[float, Field(le=0.0, allow_inf_nan=False)]
Fields = Annotated[
    dict[str, JsonValue],
    Field(
        default_factory=dict,
        max_length=64,
        description="A task row's other columns, passed on to a verifier function as keywords.",
    ),
]


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class Strict(BaseModel):
    """Unknown fields are errors: a typo in a request must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


# client -> agent_a, agent_a -> agent_b, client -> agent_b


class Feedback(Strict):
    """Agent B's verdict, the three numbers the loss uses."""

    solution_score: Score
    reasoning_score: Score
    is_correct: bool

    @property
    def combined(self) -> float:
        """S = (solution_score + reasoning_score) / 2, as in the loss spec."""
        return (self.solution_score + self.reasoning_score) / 2


VerifyMethod = Literal["auto", "rule", "model", "function"]
DecidedBy = Literal["rule", "model", "both", "function"]


class VerifyRequest(Strict):
    problem: Text | None = Field(
        default=None, description="Needed unless method is 'rule': the model judge reads it."
    )
    solution: Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
    reference_answer: OptionalText
    method: VerifyMethod = Field(
        default="auto",
        description="auto: the verifier function when the server has one, else rule when a "
        "reference answer is given, else the model judge.",
    )
    fields: Fields

    @model_validator(mode="after")
    def _method_has_its_inputs(self) -> VerifyRequest:
        if self.method == "rule" and self.reference_answer is None:
            raise ValueError("method 'rule' needs a reference_answer")
        # Only the rules score without the problem; whether 'auto' asks the judge is the
        # server's choice (GVLOOP_VERIFIER_JUDGE_REASONING), so 'auto' needs it too.
        if self.method != "rule" and self.problem is None:
            raise ValueError(
                f"method '{self.method}' needs the problem (the model judge reads it); "
                "without one, send method 'rule' and a reference_answer"
            )
        return self


class VerifyBatchRequest(Strict):
    items: Annotated[list[VerifyRequest], Field(min_length=1, max_length=MAX_BATCH)]


class VerifyResponse(Feedback):
    """Feedback plus how it was decided."""

    extracted_answer: str | None = Field(description="Final answer found in the solution.")
    decided_by: DecidedBy
    judge_p_correct: Score | None = Field(default=None, description="p(Yes) for the answer.")
    judge_p_reasoning: Score | None = Field(default=None, description="p(Yes) for the steps.")
    judge_version: int | None = Field(
        default=None,
        description="The weight version of the judge that answered, when its server reports "
        "one (a gvloop engine: agent A's model judging, which follows every hot swap); the older "
        "of the versions read before and after its questions. None: the judge was not asked, "
        "or it reports no version (the local judge).",
    )
    arithmetic_checked: int = Field(default=0, ge=0, description="Stated 'a op b = c' found.")
    arithmetic_correct: int = Field(default=0, ge=0)
    model: str
    latency_ms: float = Field(ge=0)


class VerifyBatchResponse(Strict):
    data: list[VerifyResponse]
    count: int


# client -> agent_a


class ChatMessage(Strict):
    role: Literal["system", "user", "assistant"]
    content: Annotated[str, Field(max_length=MAX_TEXT_CHARS)]


class SamplingParams(Strict):
    temperature: float = Field(default=0.8, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    max_tokens: int = Field(default=256, ge=1, le=4096)
    min_tokens: int = Field(default=0, ge=0, le=4096, description="No end of sequence before.")
    seed: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _min_within_max(self) -> SamplingParams:
        if self.min_tokens > self.max_tokens:
            raise ValueError(
                f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})"
            )
        return self


class ProblemIn(Strict):
    problem: Text
    reference_answer: OptionalText
    id: str | None = Field(default=None, max_length=128, description="Defaults to a new uuid.")
    messages: list[ChatMessage] | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="The prompt as a conversation, sent instead of `problem` (which is then its "
        "last user message, what the verifier reads).",
    )
    fields: Fields

    def chat(self, system_prompt: str | None = None) -> list[ChatMessage]:
        """The prompt as sent: the engine applies the model's chat template to it. A problem's
        own conversation keeps its own system message, if it has one."""
        messages = self.messages or [ChatMessage(role="user", content=self.problem)]
        if not system_prompt or messages[0].role == "system":
            return messages
        return [ChatMessage(role="system", content=system_prompt), *messages]

    def verify_request(self, solution: str) -> VerifyRequest:
        """`solution` to this problem, for the verifier: the reference answer and every other
        field of the problem go with it (a verifier function reads them)."""
        return VerifyRequest(
            problem=self.problem,
            solution=solution,
            reference_answer=self.reference_answer,
            fields=self.fields,
        )


class GenerateRequest(Strict):
    problems: Annotated[list[ProblemIn], Field(min_length=1, max_length=MAX_BATCH)]
    n: int = Field(default=1, ge=1, le=16, description="Samples per problem.")
    sampling: SamplingParams = SamplingParams()
    system_prompt: OptionalText
    wait: bool = Field(
        default=True, description="false: answer 202 with a job id at once; poll GET /jobs/{id}."
    )


class GeneratedSolution(Strict):
    sample_id: str
    solution: str
    feedback: VerifyResponse
    weight_version: int
    completion_tokens: int
    finish_reason: str | None = None
    queued: bool = Field(description="Whether the sample entered the training queue.")
    queue_id: str | None = Field(
        default=None,
        description="Its entry in the training stream. None: not queued, because the queue was "
        "full or Redis failed (in which case it may have been appended just before the failure).",
    )


class ProblemResult(Strict):
    problem_id: str
    problem: str
    reference_answer: str | None
    solutions: list[GeneratedSolution]


class GenerateResponse(Strict):
    data: list[ProblemResult]
    count: int


JobState = Literal["pending", "running", "done", "failed"]


class JobStatus(Strict):
    job_id: str
    state: JobState
    result: GenerateResponse | None = None
    error: str | None = None
    created_at: datetime
    finished_at: datetime | None = None


# trainer -> agent_a


SwapStrategy = Literal["stage", "reload"]


class SwapRequest(Strict):
    checkpoint_dir: Annotated[str, Field(min_length=1, max_length=4096)]
    version: int = Field(ge=0, description="Weight version that the checkpoint becomes.")
    strategy: SwapStrategy = Field(
        default="stage",
        description="stage: every engine reads the checkpoint while it serves, then pauses only "
        "to flip it in; reload: every engine pauses, then reads it (slower: the baseline).",
    )


class SwapTimings(Strict):
    """Seconds of each phase of a swap, over every engine."""

    pause_s: float
    """From the pause sent to every engine paused: each finishes the step in flight first
    (generating as usual), so this is as long as the engine's steps are."""
    reload_s: float
    """Inside the pause: the flip of staged weights (or the reload from disk), with the
    version set and the prefix cache reset alongside."""
    resume_s: float
    """Resume, and the new version recorded."""
    total_s: float
    stage_s: float = 0.0
    """Staging while the engines serve (stage strategy only)."""
    stopped_s: float = 0.0
    """Generation stopped: from the first engine standing still (paused, its step in flight
    done) to the last engine resumed."""
    versions_differ_s: float = 0.0
    """From the first engine serving the new version to the last: while engines disagree."""


class SwapResponse(Strict):
    version: int
    checkpoint_dir: str
    engines: int
    timings: SwapTimings
    strategy: SwapStrategy = "stage"


class WeightInfo(Strict):
    version: int
    checkpoint_dir: str | None


# agent_a -> trainer, via Redis


class SampleGroup(Strict):
    """How the samples generated together for one problem fared: the contrast the trainer can
    choose to learn from (a group all right or all wrong has none)."""

    size: int = Field(ge=1)
    correct: int = Field(ge=0)

    @model_validator(mode="after")
    def _correct_within_size(self) -> SampleGroup:
        if self.correct > self.size:
            raise ValueError(f"{self.correct} correct samples in a group of {self.size}")
        return self


class Sample(Strict):
    """One generated and verified solution: what the trainer learns from.

    The token ids are the ones vLLM used, so the trainer scores exactly the sequence that was
    sampled instead of re-tokenising text (which can split differently).

    Schema 2 added `completion_logprobs`; a schema-1 entry still parses, without them (the
    trainer then cannot measure how far it has moved from that sample's sampler).
    `extracted_answer` came later, optional within schema 2: an entry without it parses (its
    sample takes no part in the exploration bonus).
    """

    schema_version: Literal[1, 2] = SCHEMA_VERSION
    sample_id: str = Field(default_factory=new_id, min_length=1, max_length=128)
    problem_id: str = Field(min_length=1, max_length=128)
    problem: Text
    reference_answer: OptionalText
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    prompt_token_ids: Annotated[list[TokenId], Field(min_length=1)]
    completion_token_ids: Annotated[list[TokenId], Field(min_length=1)]
    completion_logprobs: list[LogProb] | None = Field(
        default=None,
        description="log p(token) of each completion token under the weights that sampled it "
        "(weight_version), as the engine computed it; None when unknown.",
    )
    sampling: SamplingParams
    solution: Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
    feedback: Feedback
    extracted_answer: str | None = Field(
        default=None,
        max_length=MAX_TEXT_CHARS,
        description="The final answer agent B found in the solution (its extracted_answer); "
        "None when it found none, or from a generator before this field. What the trainer's "
        "exploration bonus counts.",
    )
    group: SampleGroup | None = Field(
        default=None, description="The samples of the same problem and request, this one included."
    )
    weight_version: int = Field(ge=0)
    model: str = Field(min_length=1)
    created_at: datetime = Field(default_factory=utcnow, description="Generation started.")
    verified_at: datetime = Field(default_factory=utcnow)

    @model_validator(mode="after")
    def _one_logprob_per_token(self) -> Sample:
        logprobs, tokens = self.completion_logprobs, self.completion_token_ids
        if logprobs is not None and len(logprobs) != len(tokens):
            raise ValueError(
                f"{len(logprobs)} completion_logprobs for {len(tokens)} completion tokens"
            )
        return self


# OpenRLHF -> agent_b: its remote reward model protocol (POST /get_reward)


class RewardRequest(Strict):
    """What OpenRLHF's remote reward client posts: each query is its prompt followed by the
    response to score; labels are the reference answers (empty: the model judge decides)."""

    # A numeric label column (GSM8K-style answers) arrives as JSON numbers.
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    query: Annotated[
        list[Annotated[str, Field(max_length=2 * MAX_TEXT_CHARS)]],
        Field(min_length=1, max_length=MAX_BATCH),
    ]
    prompts: Annotated[
        list[Annotated[str, Field(max_length=MAX_TEXT_CHARS)]],
        Field(min_length=1, max_length=MAX_BATCH),
    ]
    labels: list[Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | None] | None = None

    @model_validator(mode="after")
    def _queries_continue_their_prompts(self) -> RewardRequest:
        for name, values in (("prompts", self.prompts), ("labels", self.labels)):
            if values is not None and len(values) != len(self.query):
                raise ValueError(f"{len(self.query)} queries but {len(values)} {name}: one each")
        for i, (query, prompt) in enumerate(zip(self.query, self.prompts, strict=True)):
            if not query.startswith(prompt):
                raise ValueError(
                    f"query {i} does not start with prompts[{i}]: each query must be its prompt "
                    "followed by the response"
                )
            if len(query) - len(prompt) > MAX_TEXT_CHARS:
                raise ValueError(f"the response in query {i} is over {MAX_TEXT_CHARS} characters")
            if not prompt and not (self.labels and self.labels[i]):
                raise ValueError(
                    f"query {i} has neither a prompt (the judge reads it) nor a label (the rules)"
                )
        return self


class RewardLogs(Strict):
    """Per query. Numbers only: OpenRLHF turns every extra_logs list into a tensor, so how a
    verdict was decided is one 0/1 column per way."""

    solution_score: list[float]
    reasoning_score: list[float]
    is_correct: list[float]
    decided_by_rule: list[float]
    decided_by_model: list[float]
    decided_by_both: list[float]
    decided_by_function: list[float]


class RewardResponse(Strict):
    rewards: list[float] = Field(description="GVLOOP_VERIFIER_REWARD_FIELD of each verdict.")
    scores: list[float] = Field(description="is_correct as 0/1.")
    extra_logs: RewardLogs
