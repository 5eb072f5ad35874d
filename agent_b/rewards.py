"""The verifier as a reward for the RL trainers of the ecosystem: TRL's reward functions, verl's
`compute_score`, OpenRLHF's remote reward (the numbers of `POST /get_reward`, and its Python
`reward_func`).

The adapters score on a verifier server (`/verify/batch`, URL and token from the arguments,
else `GVLOOP_VERIFIER_HOST`/`_PORT`/`_API_TOKEN`) or, with `local=True`, in this process like
`gvloop verify --local` (rules only unless an item needs the judge, which then loads once).

    from agent_b.rewards import reward_function
    trainer = GRPOTrainer(..., reward_funcs=reward_function(reference_column="answer"))

    # verl: reward.custom_reward_function.path=pkg://agent_b.rewards
    #       reward.custom_reward_function.name=compute_score
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from agent_b.metrics import VerifierMetrics
from agent_b.scoring import Verifier, decided_by, setup_verifier
from agent_b.settings import RewardField, VerifierSettings
from services.clients import VerifierClient
from services.schemas import (
    MAX_BATCH,
    RewardLogs,
    RewardRequest,
    RewardResponse,
    VerifyBatchRequest,
    VerifyRequest,
    VerifyResponse,
)

T = TypeVar("T")

# What TRL passes a reward function besides the dataset's columns
TRL_ARGUMENTS = frozenset({"completion_ids", "log_metric", "log_extra", "trainer_state"})
# Past the verifier's own deadline for a judge answer (120 s by default), so a slow judge
# comes back as its 503, not as a client timeout.
CLIENT_TIMEOUT_S = 300.0
DECIDERS = ("rule", "model", "both", "function")


def reward_value(verdict: VerifyResponse, field: RewardField) -> float:
    """The number a trainer optimises: S = (solution_score + reasoning_score) / 2 by default."""
    if field == "combined":
        return verdict.combined
    return float(getattr(verdict, field))


def verdict_logs(verdict: VerifyResponse) -> dict[str, float]:
    """The verdict as numbers only, which is what the trainers' loggers average."""
    return {
        "solution_score": verdict.solution_score,
        "reasoning_score": verdict.reasoning_score,
        "is_correct": float(verdict.is_correct),
        **{f"decided_by_{way}": float(verdict.decided_by == way) for way in DECIDERS},
    }


def verify_request(
    problem: str | None,
    solution: str,
    reference: object,
    fields: dict[str, Any] | None = None,
) -> VerifyRequest:
    """An empty reference leaves the decision to the judge; without a problem only the rules can
    decide (method 'rule'). `fields`: the row's other columns, for a verifier function (made
    JSON-able as the wire carries them)."""
    reference_answer = None if reference is None or reference == "" else str(reference)
    if not problem and reference_answer is None:
        raise ValueError(
            f"nothing to score {solution[:60]!r} against: neither a problem (the judge reads "
            "it) nor a reference answer (the rules compare with it)"
        )
    method = "auto" if problem else "rule"
    return VerifyRequest(
        problem=problem or None,
        solution=solution,
        reference_answer=reference_answer,
        method=method,
        fields=json.loads(json.dumps(fields or {}, default=str)),
    )


# The scorer every adapter shares


class Scorer:
    """Scores requests on a verifier server or in this process.

    It runs on an event loop of its own, in a daemon thread started on first use: the HTTP
    client and the in-process verifier (judge, math-verify workers) belong to the loop they were
    made on, while TRL calls from its own loop and verl from executor threads."""

    def __init__(
        self, settings: VerifierSettings, url: str | None, token: str | None, local: bool
    ) -> None:
        self.settings = settings
        self.url = url or f"http://{settings.host}:{settings.port}"
        self.token = token or settings.api_token
        self.local = local
        self._start = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: VerifierClient | None = None
        self._verifier: Verifier | None = None
        self._loading: asyncio.Future[None] | None = None

    async def score(self, requests: Sequence[VerifyRequest]) -> list[VerifyResponse]:
        """One verdict per request, in order (from any event loop)."""
        return await asyncio.wrap_future(self._submit(self._score(requests)))

    def score_sync(self, requests: Sequence[VerifyRequest]) -> list[VerifyResponse]:
        """`score` for callers without an event loop."""
        return self._submit(self._score(requests)).result()

    def close(self) -> None:
        """Close the client or the verifier (its worker processes) and stop the loop."""
        if self._loop is None:
            return
        self._submit(self._aclose()).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop = None

    def _submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        with self._start:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(
                    target=self._loop.run_forever, name="gvloop-rewards", daemon=True
                ).start()
            return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    async def _score(self, requests: Sequence[VerifyRequest]) -> list[VerifyResponse]:
        chunks = [list(requests[i : i + MAX_BATCH]) for i in range(0, len(requests), MAX_BATCH)]
        if self.local:
            verifier = await self._local_verifier(requests)
            return [v for chunk in chunks for v in await verifier.verify_many(chunk)]
        if self._client is None:
            self._client = VerifierClient(self.url, self.token, timeout_s=CLIENT_TIMEOUT_S)
        answers = await asyncio.gather(
            *(self._client.verify_batch(VerifyBatchRequest(items=chunk)) for chunk in chunks)
        )
        return [v for answer in answers for v in answer.data]

    async def _local_verifier(self, requests: Sequence[VerifyRequest]) -> Verifier:
        if self._verifier is None:
            self._verifier = setup_verifier(self.settings, VerifierMetrics())
        # The rules need no model: load the judge only once an item needs it.
        if any(decided_by(r, self.settings) not in ("rule", "function") for r in requests):
            if self._loading is None:
                self._loading = asyncio.ensure_future(self._verifier.load())
            await self._loading
        return self._verifier

    async def _aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        if self._verifier is not None:
            await self._verifier.aclose()


# OpenRLHF: POST /get_reward and reward_func files


def openrlhf_requests(body: RewardRequest) -> list[VerifyRequest]:
    """Query minus prompt is the response; the prompt is the problem, the label the reference."""
    labels = body.labels or [None] * len(body.query)
    return [
        verify_request(prompt, query[len(prompt) :], label)
        for query, prompt, label in zip(body.query, body.prompts, labels, strict=True)
    ]


def openrlhf_response(verdicts: list[VerifyResponse], field: RewardField) -> RewardResponse:
    logs = [verdict_logs(v) for v in verdicts]
    return RewardResponse(
        rewards=[reward_value(v, field) for v in verdicts],
        scores=[float(v.is_correct) for v in verdicts],
        extra_logs=RewardLogs(**{key: [log[key] for log in logs] for key in logs[0]}),
    )


def openrlhf_reward_func(
    url: str | None = None,
    token: str | None = None,
    *,
    local: bool = False,
    field: RewardField | None = None,
    settings: VerifierSettings | None = None,
) -> Callable[[list[str], list[str], list[object]], dict[str, Any]]:
    """OpenRLHF's `reward_func(queries, prompts, labels)`, for a `--reward.remote_url` that names
    a Python file: /get_reward's answer, but with the verifier's token (OpenRLHF's own HTTP
    client sends none) or scored in this process (`local`). Arguments as `reward_function`'s.

        # reward_func.py
        from agent_b.rewards import openrlhf_reward_func
        reward_func = openrlhf_reward_func("http://verifier:8002", token="...")
    """
    settings = settings or VerifierSettings()
    scorer = Scorer(settings, url, token, local)
    chosen = field or settings.reward_field

    def reward_func(queries: list[str], prompts: list[str], labels: list[object]) -> dict[str, Any]:
        body = RewardRequest.model_validate(
            {"query": queries, "prompts": prompts, "labels": labels}
        )
        verdicts = scorer.score_sync(openrlhf_requests(body))
        return openrlhf_response(verdicts, chosen).model_dump()

    return reward_func


# TRL


def message_text(message: str | list[dict[str, Any]], role: str) -> str:
    """Plain text as is; a conversation's last `role` message (text parts joined)."""
    if isinstance(message, str):
        return message
    content = next((m["content"] for m in reversed(message) if m["role"] == role), "")
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


class VerifierReward:
    """A TRL reward function (`reward_funcs=[...]` of `GRPOTrainer` and its kin): one reward per
    completion, the whole batch in `/verify/batch` calls. Async, so TRL runs it alongside its
    other async rewards."""

    # TRL names the reward in its logs (rewards/<name>/mean) after this.
    __name__ = "gvloop_verifier"

    def __init__(self, scorer: Scorer, reference_column: str | None, field: RewardField) -> None:
        self.scorer = scorer
        self.reference_column = reference_column
        self.field = field

    async def __call__(
        self,
        prompts: list[str | list[dict[str, Any]]],
        completions: list[str | list[dict[str, Any]]],
        **columns: Any,
    ) -> list[float]:
        """TRL passes `prompts`, `completions`, `completion_ids` and every dataset column (the
        other columns reach a verifier function as its row's fields)."""
        references: list[object] = [None] * len(completions)
        if self.reference_column is not None:
            if self.reference_column not in columns:
                raise KeyError(
                    f"no dataset column {self.reference_column!r} for the reference answers "
                    f"(columns: {sorted(columns)}); pass reference_column=None to let the "
                    "judge decide every completion"
                )
            references = columns[self.reference_column]
        rows = [
            {
                k: v[i]
                for k, v in columns.items()
                if k not in TRL_ARGUMENTS | {self.reference_column}
            }
            for i in range(len(completions))
        ]
        requests = [
            verify_request(message_text(p, "user"), message_text(c, "assistant"), r, row)
            for p, c, r, row in zip(prompts, completions, references, rows, strict=True)
        ]
        verdicts = await self.scorer.score(requests)
        if (log_metric := columns.get("log_metric")) is not None:
            logs = [verdict_logs(v) for v in verdicts]
            for key in ("solution_score", "reasoning_score", "is_correct"):
                log_metric(f"verifier/{key}", sum(log[key] for log in logs) / len(logs))
        return [reward_value(v, self.field) for v in verdicts]

    def close(self) -> None:
        self.scorer.close()


def reward_function(
    url: str | None = None,
    token: str | None = None,
    *,
    local: bool = False,
    reference_column: str | None = "answer",
    field: RewardField | None = None,
    settings: VerifierSettings | None = None,
) -> VerifierReward:
    """A TRL reward function scored by the verifier at `url` (default: GVLOOP_VERIFIER_HOST and
    _PORT) with `token` (default: GVLOOP_VERIFIER_API_TOKEN), or in this process (`local`).

    Args:
        reference_column: the dataset column holding each problem's final answer (None, or an
            empty value: the model judge decides).
        field: what the reward is: combined (S), solution_score, reasoning_score or is_correct;
            default GVLOOP_VERIFIER_REWARD_FIELD (combined).
        settings: the verifier's settings (the judge and workers of local scoring); default
            read from GVLOOP_VERIFIER_* variables.

    Example (rules only, no server, no model):

        reward = reward_function(local=True)
        asyncio.run(reward(prompts=["What is 2 + 3?"], completions=["Answer: 5"], answer=["5"]))
        # [S], the combined score of that one completion
    """
    settings = settings or VerifierSettings()
    scorer = Scorer(settings, url, token, local)
    return VerifierReward(scorer, reference_column, field or settings.reward_field)


# verl

_scorers: dict[tuple[str | None, str | None, bool], Scorer] = {}
_scorers_lock = threading.Lock()


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: object,
    extra_info: dict[str, Any] | None = None,
    *,
    url: str | None = None,
    token: str | None = None,
    local: bool = False,
    field: RewardField | None = None,
    problem_key: str = "question",
    **_: object,
) -> dict[str, float]:
    """verl's custom reward: `score` plus the verdict's numbers (verl logs every key).

    The keyword arguments come from `reward.custom_reward_function.reward_kwargs`; the problem,
    which the judge needs when `ground_truth` is empty, from `extra_info[problem_key]` (where
    verl's own data preprocessing puts the question). verl may pass more keywords (its reward
    router's), which this ignores."""
    with _scorers_lock:
        scorer = _scorers.get((url, token, local))
        if scorer is None:
            scorer = _scorers[(url, token, local)] = Scorer(VerifierSettings(), url, token, local)
    problem = (extra_info or {}).get(problem_key)
    fields = {"data_source": data_source, **(extra_info or {})}
    [verdict] = scorer.score_sync([verify_request(problem, solution_str, ground_truth, fields)])
    return {
        "score": reward_value(verdict, field or scorer.settings.reward_field),
        **verdict_logs(verdict),
    }
