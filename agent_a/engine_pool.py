"""The vLLM engines agent A generates with: chat completions spread over them (least busy
first), and the control calls a hot swap makes on each (vLLM 0.32's dev-mode routes)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from agent_a.errors import DependencyFailedError, DependencyUnavailableError, InvalidRequestError
from agent_a.settings import GeneratorSettings
from services.clients import ServiceUnavailableError, request_with_retry, wait_ready

logger = logging.getLogger(__name__)

BASE_VERSION = "default"  # what vLLM reports before any update_weight_version
# agent_a.vllm_worker.WeightReloadExtension's methods (not imported: it needs vLLM)
RELOAD_METHOD = "gvloop_reload_weights"
STAGE_METHOD = "gvloop_stage_weights"
STAGE_STATUS_METHOD = "gvloop_stage_status"
FLIP_METHOD = "gvloop_flip_weights"
DISCARD_METHOD = "gvloop_discard_staged"
STAGE_POLL_S = 0.05  # each poll takes the engine's loop between two steps: cheap
READY_METHOD = "gvloop_extension_ready"


@dataclass
class Engine:
    url: str
    http: httpx.AsyncClient
    slots: asyncio.Semaphore
    in_flight: int = 0
    version: int = 0
    """The weight version agent A last set (or read at start) on this engine."""
    healthy: bool = True
    problem: str | None = None
    """Why the engine is out of rotation (a swap it could not recover from)."""


class EngineCallError(RuntimeError):
    """One control call to one engine failed (transport error, timeout or error answer)."""

    def __init__(self, url: str, call: str, cause: str) -> None:
        super().__init__(f"engine {url}: {call} failed: {cause}")
        self.url = url


class StageMemoryError(EngineCallError):
    """An engine refused to stage: its host lacks the memory for a second copy of the weights."""


def parse_version(raw: str) -> int:
    """vLLM's weight version string as gvloop's int (0: the base model)."""
    if raw == BASE_VERSION:
        return 0
    if not raw.isdigit():
        raise ValueError(f"engine serves weight version {raw!r}, not a gvloop version")
    return int(raw)


def error_message(response: httpx.Response) -> str:
    """The human part of an engine's error body ({"error": {"message"}} or {"detail"})."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and "message" in error:
        return str(error["message"])[:500]
    return str(body.get("detail", body) if isinstance(body, dict) else body)[:500]


class ChatStream:
    """An engine's streamed chat completion: its server-sent events, parsed."""

    def __init__(self, pool: EnginePool, engine: Engine, response: httpx.Response, version: int):
        self._pool = pool
        self._engine = engine
        self._response = response
        self.version = version
        """The version the engine reported before the request."""
        self.longest_gap_s = 0.0
        """The longest wait between two chunks so far: what a streaming client sees as a stall
        (the first chunk's wait is the prompt's prefill, not a stall)."""

    async def chunks(self) -> AsyncIterator[dict[str, Any]]:
        """Each chunk, until the engine's [DONE]; an error event raises."""
        last: float | None = None
        try:
            async for line in self._response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                now = time.perf_counter()
                if last is not None:
                    self.longest_gap_s = max(self.longest_gap_s, now - last)
                last = now
                data = line.removeprefix("data:").strip()
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                if "error" in chunk:
                    raise DependencyFailedError(
                        f"engine {self._engine.url} failed mid-stream: {chunk['error']}"
                    )
                yield chunk
        except httpx.HTTPError as exc:
            raise DependencyUnavailableError(
                f"engine {self._engine.url} broke off the stream: {type(exc).__name__}: {exc}"
            ) from exc
        raise DependencyFailedError(f"engine {self._engine.url} ended the stream without [DONE]")

    async def final_version(self) -> int:
        """Once read to the end: the older of the versions before and after, as `chat` gives."""
        return min(self.version, await self._pool.reported_version(self._engine))


class EnginePool:
    def __init__(self, settings: GeneratorSettings) -> None:
        self.settings = settings
        self.engines = [
            Engine(
                url.rstrip("/"),
                httpx.AsyncClient(base_url=url.rstrip("/"), timeout=settings.engine_timeout_s),
                asyncio.Semaphore(settings.max_in_flight_per_engine),
            )
            for url in settings.engine_urls
        ]
        self.model = ""
        """The served model's id, as chat requests name it."""
        self.model_root = ""
        """The directory (or hub name) the engines loaded at start: the base weights."""
        self._turn = 0

    async def connect(self) -> list[int]:
        """Wait for every engine, learn the served model; return each engine's weight version."""
        await asyncio.gather(
            *(
                wait_ready(f"{e.url}/health", self.settings.engine_wait_s, f"engine {e.url}")
                for e in self.engines
            )
        )
        for engine in self.engines:
            await self._check_swappable(engine)
        served = [await self._served_model(e) for e in self.engines]
        if len(set(served)) > 1:
            raise RuntimeError(f"the engines serve different models: {served}")
        self.model, self.model_root = served[0]
        for engine in self.engines:
            engine.version = await self.weight_version(engine)
        return [e.version for e in self.engines]

    def pick(self) -> Engine:
        """The healthy engine with the fewest requests in flight (taking turns on ties)."""
        usable = [e for e in self.engines if e.healthy]
        if not usable:
            problems = "; ".join(f"{e.url}: {e.problem}" for e in self.engines)
            raise DependencyUnavailableError(f"no healthy engine ({problems})")
        least = min(e.in_flight for e in usable)
        candidates = [e for e in usable if e.in_flight == least]
        self._turn += 1
        return candidates[self._turn % len(candidates)]

    async def chat(self, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """One chat completion and the weight version that produced it; transport errors and
        busy answers are retried.

        The version is the older of what the engine reports just before and just after the
        request: a swap that lands while the request runs (it then finishes on the new
        weights), or an engine that restarted on its base weights, or another replica's swap,
        can only make the recorded version older than some tokens, never newer."""
        async with self._completion(body, stream=False) as (engine, response, version):
            answer = response.json()
            return answer, min(version, await self.reported_version(engine))

    @contextlib.asynccontextmanager
    async def stream_chat(self, body: dict[str, Any]) -> AsyncIterator[ChatStream]:
        """A streamed chat completion (`body` asks for stream): its chunks as they come, and
        the weight version that produced them, taken as `chat` takes it."""
        async with self._completion(body, stream=True) as (engine, response, version):
            yield ChatStream(self, engine, response, version)

    @contextlib.asynccontextmanager
    async def _completion(
        self, body: dict[str, Any], stream: bool
    ) -> AsyncIterator[tuple[Engine, httpx.Response, int]]:
        """An engine's successful answer to a chat request, held open (with the engine's slot)
        while the caller reads it, with the version the engine reported before it."""
        engine = self.pick()
        engine.in_flight += 1
        try:
            async with engine.slots:
                version = await self.reported_version(engine)
                response = await request_with_retry(
                    engine.http,
                    "POST",
                    "/v1/chat/completions",
                    what=f"engine {engine.url}",
                    policy=self.settings.retry,
                    json=body,
                    stream=stream,
                )
                try:
                    if not response.is_success:
                        await response.aread()
                    if response.status_code in (400, 422):
                        raise InvalidRequestError(
                            f"the engine refused the request: {error_message(response)}"
                        )
                    if not response.is_success:
                        raise DependencyFailedError(
                            f"engine {engine.url} answered {response.status_code}: "
                            f"{error_message(response)}"
                        )
                    yield engine, response, version
                finally:
                    await response.aclose()
        except ServiceUnavailableError as exc:
            raise DependencyUnavailableError(str(exc)) from exc
        finally:
            engine.in_flight -= 1

    # control calls of a hot swap: one try each, the swap decides what a failure means

    async def pause(self, engine: Engine) -> None:
        """Freeze scheduling; requests in flight wait (mode=keep), none is aborted."""
        await self._control(engine, "POST", "/pause?mode=keep")

    async def reload(self, engine: Engine, checkpoint_dir: str) -> None:
        timeout = self.settings.reload_timeout_s
        await self._control(
            engine,
            "POST",
            "/collective_rpc",
            {
                "method": RELOAD_METHOD,
                "kwargs": {"weights_path": checkpoint_dir},
                "timeout": timeout,
            },
            deadline_s=timeout + 5,  # let the engine's own deadline answer first
        )

    async def stage(self, engine: Engine, checkpoint_dir: str) -> None:
        """Have every worker of the engine read the checkpoint into memory, in its own layout,
        while the engine keeps serving; returns once all hold it (or raises why not)."""
        headroom = int(self.settings.stage_headroom_gib * 2**30)
        await self._rpc(
            engine, STAGE_METHOD, {"weights_path": checkpoint_dir, "headroom_bytes": headroom}
        )
        deadline = asyncio.get_running_loop().time() + self.settings.reload_timeout_s
        while True:
            states = await self._rpc(engine, STAGE_STATUS_METHOD)
            failed = [s for s in states if s.get("state") not in ("staging", "ready")]
            if short := [s for s in failed if s.get("short_of_memory")]:
                raise StageMemoryError(engine.url, "stage", str(short[0].get("error")))
            if failed or not states:
                cause = failed[0].get("error") or failed[0] if failed else "no worker answered"
                raise EngineCallError(engine.url, "stage", str(cause))
            if all(s.get("state") == "ready" and s.get("path") == checkpoint_dir for s in states):
                return
            if asyncio.get_running_loop().time() > deadline:
                raise EngineCallError(
                    engine.url, "stage", f"not staged after {self.settings.reload_timeout_s:.0f}s"
                )
            await asyncio.sleep(STAGE_POLL_S)

    async def flip(self, engine: Engine, checkpoint_dir: str) -> None:
        """Copy the staged weights into the live model (engine paused)."""
        await self._rpc(engine, FLIP_METHOD, {"weights_path": checkpoint_dir})

    async def discard_staged(self, engine: Engine) -> None:
        await self._rpc(engine, DISCARD_METHOD)

    async def _rpc(
        self, engine: Engine, method: str, kwargs: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """A worker-extension call on every worker of the engine: their answers."""
        timeout = self.settings.control_timeout_s
        body = {"method": method, "kwargs": kwargs or {}, "timeout": timeout}
        answer = await self._control(engine, "POST", "/collective_rpc", body, timeout + 5)
        return [r if isinstance(r, dict) else {} for r in answer.get("results", [])]

    async def set_version(self, engine: Engine, version: int) -> None:
        await self._control(engine, "POST", "/update_weight_version", {"new_version": str(version)})

    async def reset_prefix_cache(self, engine: Engine) -> None:
        """Drop KV computed with the old weights, or a repeated prompt reuses it."""
        answer = await self._control(engine, "POST", "/reset_prefix_cache")
        if not answer.get("success"):
            raise EngineCallError(engine.url, "reset_prefix_cache", "cache blocks still held")

    async def resume(self, engine: Engine) -> None:
        await self._control(engine, "POST", "/resume")

    async def weight_version(self, engine: Engine) -> int:
        answer = await self._control(engine, "GET", "/weight_info")
        return parse_version(str(answer.get("weight_version")))

    async def reported_version(self, engine: Engine) -> int:
        """The version `engine` serves now; an engine that cannot tell is unavailable (503)."""
        try:
            return await self.weight_version(engine)
        except (EngineCallError, ValueError) as exc:
            raise DependencyUnavailableError(str(exc)) from exc

    async def is_alive(self, engine: Engine) -> bool:
        try:
            response = await engine.http.get("/health", timeout=5.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def _check_swappable(self, engine: Engine) -> None:
        """Hot swaps need vLLM's dev-mode routes and gvloop's worker extension."""
        try:
            await self._control(engine, "POST", "/collective_rpc", {"method": READY_METHOD})
        except EngineCallError as exc:
            raise RuntimeError(
                f"{exc}: hot swaps cannot work on this engine; start it with "
                "`gvloop agent-a engine` (VLLM_SERVER_DEV_MODE=1 and the gvloop worker extension)"
            ) from exc

    async def _served_model(self, engine: Engine) -> tuple[str, str]:
        answer = await self._control(engine, "GET", "/v1/models")
        model = answer["data"][0]
        return str(model["id"]), str(model.get("root") or model["id"])

    async def _control(
        self,
        engine: Engine,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        deadline_s: float | None = None,
    ) -> dict[str, Any]:
        """One control call. A dropped connection is retried (vLLM closes it after an error
        answer, and every control call is idempotent); a timeout is not: the engine may still
        be working on it, and the swap's recovery decides what comes next."""
        policy = self.settings.retry

        async def send() -> httpx.Response:
            timeout = deadline_s or self.settings.control_timeout_s
            return await engine.http.request(method, path, json=body, timeout=timeout)

        def dropped(failure: BaseException) -> bool:
            return isinstance(failure, httpx.TransportError) and not isinstance(
                failure, httpx.TimeoutException
            )

        def on_retry(failure: BaseException, attempt: int, delay: float) -> None:
            logger.warning(
                "engine %s: %s %s: %s: %s; retry %d/%d in %.1fs", engine.url, method, path,
                type(failure).__name__, failure, attempt, policy.attempts - 1, delay,
            )  # fmt: skip

        try:
            response = await policy.call(send, dropped, on_retry)
        except httpx.TransportError as exc:
            raise EngineCallError(engine.url, path, f"{type(exc).__name__}: {exc}") from exc
        if not response.is_success:
            cause = f"HTTP {response.status_code}: {error_message(response)}"
            raise EngineCallError(engine.url, path, cause)
        return response.json() if response.content else {}

    async def aclose(self) -> None:
        await asyncio.gather(*(e.http.aclose() for e in self.engines))
