"""The durable sample queue: a Redis stream read through a consumer group.

Life of a sample: `put` appends it (refused over the bound), `read` delivers it to one consumer,
where it stays pending until `ack`, which the consumer calls only once the step that used it is
committed. A consumer that dies leaves its samples pending; after `claim_idle_s` another consumer
reclaims them (XAUTOCLAIM), and a restarted consumer with the same name gets its own back first.
Acked entries are deleted, so the stream length is exactly the backlog of unfinished work: the
bound counts it, and nothing unconsumed is ever trimmed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import redis.asyncio as redis
from pydantic import ValidationError

from services.redis_server import connect
from services.schemas import Sample
from services.settings import CommonSettings

logger = logging.getLogger(__name__)

PAYLOAD = "sample"

# Check-and-append in one step, so concurrent producers cannot overshoot the bound together.
_BOUNDED_XADD = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return false end
return redis.call('XADD', KEYS[1], '*', ARGV[2], ARGV[3])
"""


class QueueFullError(Exception):
    """The stream holds `max_backlog` unfinished samples; retry after the trainer catches up."""

    def __init__(self, stream: str, backlog: int) -> None:
        super().__init__(
            f"queue {stream!r} is full ({backlog} unacknowledged samples): "
            "the trainer is behind; retry later or raise GVLOOP_MAX_BACKLOG"
        )
        self.stream = stream
        self.backlog = backlog


@dataclass(frozen=True)
class Delivery:
    """A sample handed to a consumer, with the stream id to ack it by."""

    id: str
    sample: Sample
    redelivered: bool = False


@dataclass
class QueueStats:
    length: int
    pending: int
    oldest_pending_age_s: float | None
    dead_letters: int
    consumers: dict[str, int] = field(default_factory=dict)


class SampleQueue:
    """Producer and consumer side of one stream and consumer group."""

    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        group: str,
        *,
        consumer: str = "producer",
        max_backlog: int = 10_000,
        claim_idle_s: float = 300.0,
        dead_letter_stream: str | None = None,
    ) -> None:
        self._client = client
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self._max_backlog = max_backlog
        self.claim_idle_ms = int(claim_idle_s * 1000)
        self.dead_letter_stream = dead_letter_stream or f"{stream}:dead"
        self._bounded_xadd = client.register_script(_BOUNDED_XADD)
        # A restarted consumer first re-reads what it had been given before it died.
        self._own_history_from: str | None = "0"

    @property
    def bound(self) -> int:
        """The most unfinished samples the stream holds; `put` refuses any beyond it."""
        return self._max_backlog

    async def ensure_group(self) -> None:
        """Create the stream and the group if absent; starting from 0 so nothing is skipped."""
        try:
            await self._client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # producer side

    async def put(self, sample: Sample) -> str:
        """Append a sample; raise QueueFullError rather than grow past the bound."""
        entry_id = await self._bounded_xadd(
            keys=[self.stream], args=[self._max_backlog, PAYLOAD, sample.model_dump_json()]
        )
        if entry_id is None:
            raise QueueFullError(self.stream, await self._client.xlen(self.stream))
        return _text(entry_id)

    async def room(self) -> int:
        """How many more samples `put` would take now."""
        return self._max_backlog - await self._client.xlen(self.stream)

    # consumer side

    async def read(self, count: int, block_ms: int = 1000) -> list[Delivery]:
        """Up to `count` samples: own unacked ones first, then stale ones of dead consumers,
        then new ones (waiting up to `block_ms` for any)."""
        deliveries = await self._read_own_history(count)
        if not deliveries:
            deliveries = await self.reclaim(count)
        if not deliveries:
            response = await self._client.xreadgroup(
                self.group, self.consumer, {self.stream: ">"}, count=count, block=block_ms
            )
            entries = response[0][1] if response else []
            deliveries = await self._parse(entries)
        return deliveries

    async def reclaim(self, count: int) -> list[Delivery]:
        """Take over samples idle on other consumers longer than `claim_idle_s`."""
        claimed: list[tuple[bytes, dict[bytes, bytes]]] = []
        cursor = "0-0"
        while len(claimed) < count:
            result = await self._client.xautoclaim(
                self.stream,
                self.group,
                self.consumer,
                min_idle_time=self.claim_idle_ms,
                start_id=cursor,
                count=count - len(claimed),
            )
            cursor, entries = _text(result[0]), result[1]
            claimed.extend(e for e in entries if e[1] is not None)
            if cursor == "0-0":
                break
        if claimed:
            logger.info("reclaimed %d samples idle > %d ms", len(claimed), self.claim_idle_ms)
        return await self._parse(claimed, redelivered=True)

    async def ack(self, ids: list[str]) -> int:
        """Mark samples done (their step is committed) and drop them from the stream."""
        if not ids:
            return 0
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.xack(self.stream, self.group, *ids)
            pipe.xdel(self.stream, *ids)
            acked, _ = await pipe.execute()
        return int(acked)

    async def dead_letter(self, entry_id: str, raw: str, reason: str) -> None:
        """Move an entry the consumer cannot use to the dead-letter stream, with why."""
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.xadd(
                self.dead_letter_stream,
                {"id": entry_id, "reason": reason[:2000], "raw": raw, "at": str(time.time())},
            )
            pipe.xack(self.stream, self.group, entry_id)
            pipe.xdel(self.stream, entry_id)
            await pipe.execute()
        logger.warning("dead-lettered %s: %s", entry_id, reason.splitlines()[0][:200])

    async def stats(self) -> QueueStats:
        length = await self._client.xlen(self.stream)
        dead = await self._client.xlen(self.dead_letter_stream)
        summary = await self._client.xpending(self.stream, self.group)
        oldest_age = None
        if summary["pending"]:
            oldest = await self._client.xpending_range(
                self.stream, self.group, min="-", max="+", count=1
            )
            oldest_age = oldest[0]["time_since_delivered"] / 1000 if oldest else None
        consumers = {_text(c["name"]): int(c["pending"]) for c in summary["consumers"] or []}
        return QueueStats(length, int(summary["pending"]), oldest_age, dead, consumers)

    async def healthy(self) -> bool:
        """Whether Redis answers (after the client's own retries)."""
        try:
            return bool(await self._client.ping())
        except redis.RedisError:
            return False

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _read_own_history(self, count: int) -> list[Delivery]:
        if self._own_history_from is None:
            return []
        response = await self._client.xreadgroup(
            self.group, self.consumer, {self.stream: self._own_history_from}, count=count
        )
        entries = response[0][1] if response else []
        if not entries:
            self._own_history_from = None
            return []
        self._own_history_from = _text(entries[-1][0])
        logger.info("redelivering %d samples this consumer had not acked", len(entries))
        return await self._parse(entries, redelivered=True)

    async def _parse(
        self, entries: list[tuple[bytes, dict[bytes, bytes]]], redelivered: bool = False
    ) -> list[Delivery]:
        deliveries = []
        for raw_id, fields in entries:
            entry_id = _text(raw_id)
            raw = fields.get(PAYLOAD.encode()) if fields else None
            if raw is None:
                await self.dead_letter(entry_id, repr(fields), f"no {PAYLOAD!r} field")
                continue
            try:
                sample = Sample.model_validate_json(raw)
            except ValidationError as exc:
                await self.dead_letter(entry_id, _text(raw, errors="replace"), str(exc))
                continue
            deliveries.append(Delivery(entry_id, sample, redelivered))
        return deliveries


def _text(value: bytes | str, errors: str = "strict") -> str:
    return value.decode(errors=errors) if isinstance(value, bytes) else value


def open_queue(settings: CommonSettings, redis_url: str, consumer: str) -> SampleQueue:
    """The stream and group the settings name, through a client with timeouts and retries."""
    return SampleQueue(
        connect(redis_url, timeout_s=settings.redis_timeout_s),
        settings.stream,
        settings.group,
        consumer=consumer,
        max_backlog=settings.max_backlog,
        claim_idle_s=settings.claim_idle_s,
        dead_letter_stream=settings.dead_letter_stream,
    )
