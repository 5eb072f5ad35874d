"""The soak's steady load: clients that post problems with reference answers (so that every
answered sample is verified and queued for training) through both doors of the generator API,
`POST /problems` and `POST /v1/chat/completions`, one request at a time each, with a timeout on
every request. Each request becomes one JSON line of the clients' log: what was sent, when, the
answer's status (or the error that stood for it), and the stream ids the answer says were
queued. The accounting trusts this log, not the server's."""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.soak_kit.stack import GENERATOR_TOKEN

AUTH = {"Authorization": f"Bearer {GENERATOR_TOKEN}"}
MAX_RETRY_AFTER_S = 2.0  # a polite client waits as asked, but the load must go on


@dataclass
class RequestRecord:
    client: int
    kind: str
    """`problems` or `chat`."""
    sent: dict[str, Any]
    started: float
    """time.time() when sent."""
    seconds: float
    status: int | None
    """None: no answer (`error` says what happened instead)."""
    error: str | None = None
    retry_after: str | None = None
    queued: list[str] = field(default_factory=list)
    """Stream ids of the samples the answer says entered the queue."""
    unconfirmed: int = 0
    """Samples answered as not queued: a Redis failure may still have appended them."""
    versions: list[int] = field(default_factory=list)
    """Weight versions the answer says produced its samples."""

    @property
    def ended(self) -> float:
        return self.started + self.seconds


def problem(rng: random.Random) -> tuple[str, str]:
    """An addition with its answer: short to generate, checkable by the verifier's rules."""
    a, b = rng.randint(1, 99), rng.randint(1, 99)
    return f"What is {a} + {b}? Give the final answer.", str(a + b)


def problems_body(rng: random.Random, max_tokens: int) -> dict[str, Any]:
    text, answer = problem(rng)
    return {
        "problems": [{"problem": text, "reference_answer": answer}],
        "n": 2,
        "sampling": {"max_tokens": max_tokens, "temperature": 0.8},
    }


def chat_body(rng: random.Random, max_tokens: int, model: str) -> dict[str, Any]:
    text, answer = problem(rng)
    return {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "n": 2,
        "max_tokens": max_tokens,
        "temperature": 0.8,
        "reference_answer": answer,
    }


def read_answer(record: RequestRecord, response: httpx.Response) -> None:
    """Note what a 200 answer says was queued (and by which weights)."""
    if response.status_code != 200:
        return
    body = response.json()
    if record.kind == "problems":
        samples = [s for r in body["data"] for s in r["solutions"]]
        record.versions = sorted({s["weight_version"] for s in samples})
    else:
        samples = body["gvloop"]["samples"] or []
        record.versions = [body["gvloop"]["weight_version"]]
    record.queued = [s["queue_id"] for s in samples if s["queued"] and s["queue_id"]]
    record.unconfirmed = sum(not s["queued"] for s in samples)


class Load:
    """`clients` clients posting until `stop`, every request logged to `log_path`."""

    def __init__(
        self, url: str, log_path: Path, clients: int, seed: int, timeout_s: float, max_tokens: int
    ) -> None:
        self.url = url
        self.log_path = log_path
        self.clients = clients
        self.seed = seed
        self.timeout_s = timeout_s
        self.max_tokens = max_tokens
        self.records: list[RequestRecord] = []
        self.model = "gvloop"
        self._log = log_path.open("a", encoding="utf-8")

    async def run(self, stop: asyncio.Event) -> None:
        # the client's own timeout: a request that hangs past it is a failure of the run
        async with httpx.AsyncClient(base_url=self.url, timeout=self.timeout_s) as http:
            try:
                self.model = (await http.get("/v1/models", headers=AUTH)).json()["data"][0]["id"]
            except (httpx.HTTPError, ValueError, KeyError, IndexError):
                pass  # the chat requests then say what is wrong, each in its record
            await asyncio.gather(*(self._client(http, c, stop) for c in range(self.clients)))
        self._log.close()

    async def _client(self, http: httpx.AsyncClient, client: int, stop: asyncio.Event) -> None:
        rng = random.Random(self.seed * 1000 + client)
        i = 0
        while not stop.is_set():
            kind = "problems" if (client + i) % 2 == 0 else "chat"
            i += 1
            body = (
                problems_body(rng, self.max_tokens)
                if kind == "problems"
                else chat_body(rng, self.max_tokens, self.model)
            )
            path = "/problems" if kind == "problems" else "/v1/chat/completions"
            record = RequestRecord(client, kind, body, time.time(), 0.0, None)
            t0 = time.monotonic()
            try:
                response = await http.post(path, json=body, headers=AUTH)
                record.status = response.status_code
                record.retry_after = response.headers.get("retry-after")
                read_answer(record, response)
            except httpx.HTTPError as exc:
                record.error = type(exc).__name__
            except (ValueError, KeyError, TypeError) as exc:  # a 200 of the wrong shape
                record.error = f"bad answer: {type(exc).__name__}: {exc}"
            record.seconds = time.monotonic() - t0
            self.records.append(record)
            self._log.write(json.dumps(asdict(record)) + "\n")
            self._log.flush()
            await self._pause(record, stop)

    async def _pause(self, record: RequestRecord, stop: asyncio.Event) -> None:
        """Wait as the answer asks (429: Retry-After), or a moment after a refusal or an error,
        so that a component down does not turn the load into a busy loop."""
        if record.status == 200:
            return
        wait = 0.5
        if record.retry_after is not None:
            try:
                wait = min(MAX_RETRY_AFTER_S, float(record.retry_after))
            except ValueError:
                pass
        try:
            await asyncio.wait_for(stop.wait(), timeout=wait)
        except TimeoutError:
            pass


def read_log(path: Path) -> list[RequestRecord]:
    """The clients' log, as written."""
    records = []
    for line in path.read_text().splitlines():
        if line:
            records.append(RequestRecord(**json.loads(line)))
    return records
