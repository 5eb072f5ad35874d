"""What the pipeline fault tests share: the settings the stack runs with, request bodies, and
readers of the generator's answers and the sample stream."""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx

GENERATOR_TOKEN = "generator-test-token"
VERIFIER_TOKEN = "verifier-test-token"
AUTH = {"Authorization": f"Bearer {GENERATOR_TOKEN}"}
ENV = {
    "GVLOOP_ENGINE_DTYPE": "float32",
    "GVLOOP_ENGINE_KV_CACHE_GIB": "1",
    "GVLOOP_ENGINE_MAX_MODEL_LEN": "1024",
    "GVLOOP_VERIFIER_RULE_WORKERS": "1",
    "GVLOOP_VERIFIER_API_TOKEN": VERIFIER_TOKEN,
    "GVLOOP_GENERATOR_VERIFIER_TOKEN": VERIFIER_TOKEN,
    "GVLOOP_GENERATOR_API_TOKEN": GENERATOR_TOKEN,
    "GVLOOP_GENERATOR_RETRY_ATTEMPTS": "3",
    "GVLOOP_GENERATOR_RETRY_BACKOFF_S": "0.2",
    "GVLOOP_GENERATOR_CONTROL_TIMEOUT_S": "10",
    "GVLOOP_GENERATOR_RELOAD_TIMEOUT_S": "60",
    "GVLOOP_GENERATOR_MAX_SAMPLES_PER_REQUEST": "8",
    # the fault tests run without a trainer: the stream must not reach its bound (429s) first
    "GVLOOP_MAX_BACKLOG": "10000",
    # Deliveries whose reply a Redis crash lost come back after this (default 300 s).
    "GVLOOP_CLAIM_IDLE_S": "5",
    "GVLOOP_TRAINER_GENERATOR_TOKEN": GENERATOR_TOKEN,
    "GVLOOP_TRAINER_BATCH_SIZE": "8",
    "GVLOOP_TRAINER_MICRO_BATCH_SIZE": "8",
    "GVLOOP_TRAINER_MAX_WAIT_S": "0.5",
    "GVLOOP_TRAINER_CHECKPOINT_EVERY": "1",
    "GVLOOP_TRAINER_KEEP_CHECKPOINTS": "1000",  # every commit record stays readable
    "GVLOOP_TRAINER_MAX_STALENESS": "1000",  # nothing skipped: counts stay exact
    "GVLOOP_TRAINER_SWAP_MAX_BACKOFF_S": "2",
    "GVLOOP_TRAINER_PROGRESS": "off",
}


def problems(tag: str, count: int = 1, n: int = 2, **sampling: Any) -> dict[str, Any]:
    """A POST /problems body of short generations."""
    return {
        "problems": [
            {"problem": f"What is {i} + {len(tag)}? ({tag})", "reference_answer": str(i + len(tag))}
            for i in range(count)
        ],
        "n": n,
        "sampling": {"max_tokens": 8, "temperature": 0.8, **sampling},
    }


def solutions(response: httpx.Response) -> list[dict]:
    """The solutions of a 200 answer (none of any other)."""
    if response.status_code != 200:
        return []
    return [s for r in response.json()["data"] for s in r["solutions"]]


def queued_ids(response: httpx.Response) -> list[str]:
    """Sample ids a 200 answer says entered the queue."""
    return [s["sample_id"] for s in solutions(response) if s["queued"]]


async def greedy(http: httpx.AsyncClient) -> tuple[str, int]:
    """The served weights' greedy answer to a fixed problem, and the version that gave it."""
    response = await http.post(
        "/problems", json=problems("greedy", n=1, temperature=0.0), headers=AUTH
    )
    assert response.status_code == 200, response.text
    (solution,) = response.json()["data"][0]["solutions"]
    return solution["solution"], solution["weight_version"]


def statuses(responses: list[httpx.Response | BaseException]) -> Counter[str]:
    """Answers by status code, or by exception name for requests that got none."""
    return Counter(
        type(r).__name__ if isinstance(r, BaseException) else str(r.status_code) for r in responses
    )
