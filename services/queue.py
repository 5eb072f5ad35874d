"""The durable sample queue: a Redis stream read through a consumer group.

Life of a sample: `put` appends it (refused over the bound), `read` delivers it to one consumer,
where it stays pending until `ack`, which the consumer calls only once the step that used it is
committed. A consumer that dies leaves its samples pending; after `claim_idle_s` another consumer
reclaims them (XAUTOCLAIM), and a restarted consumer with the same name gets its own back first.
Acked entries are deleted, so the stream length is exactly the backlog of unfinished work: the
bound counts it, and nothing unconsumed is ever trimmed.

Producers (any number of generator replicas) also hold room for samples they are still
generating: `reserve` records a reservation in Redis, next to the stream, and a `put` inside it
turns one reserved slot into a stream entry in the same script, so backlog + reservations never
pass the bound and a reserved sample always finds room. A reservation lives `reservation_ttl_s`
unless renewed; a replica that dies stops renewing, and its room comes back once it expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass, field

import redis.asyncio as redis
from pydantic import ValidationError

from services.redis_server import connect
from services.schemas import Sample
from services.settings import CommonSettings

logger = logging.getLogger(__name__)

PAYLOAD = "sample"

# The scripts' keys: the stream, the reserved samples per reservation id (hash) and each
# reservation's expiry in ms of Redis' own clock (sorted set), one clock for every replica.
# Every script first drops expired reservations, so a dead replica's room is never counted.
_LIVE_RESERVED = """local function live_reserved()
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
  for _, id in ipairs(expired) do
    redis.call('HDEL', KEYS[2], id)
    redis.call('ZREM', KEYS[3], id)
  end
  local total = 0
  for _, n in ipairs(redis.call('HVALS', KEYS[2])) do total = total + tonumber(n) end
  return now, total
end
"""


def _script(body: str) -> str:
    return _LIVE_RESERVED + body


# ARGV: bound, reservation id ('' for none), field, payload. The stream itself never passes the
# bound (whatever else writes to it); a reserved slot is spent, others' reservations are not.
_BOUNDED_XADD = _script("""
local _, reserved = live_reserved()
local backlog = redis.call('XLEN', KEYS[1])
if backlog >= tonumber(ARGV[1]) then return false end
local held = ARGV[2] ~= '' and redis.call('HGET', KEYS[2], ARGV[2])
if held and tonumber(held) > 1 then
  redis.call('HINCRBY', KEYS[2], ARGV[2], -1)
elseif held then
  redis.call('HDEL', KEYS[2], ARGV[2])
  redis.call('ZREM', KEYS[3], ARGV[2])
elseif backlog + reserved >= tonumber(ARGV[1]) then
  return false
end
return redis.call('XADD', KEYS[1], '*', ARGV[3], ARGV[4])
""")

# ARGV: bound, reservation id, samples, ttl ms. Returns {granted 0/1, backlog, reserved}.
_RESERVE = _script("""
local now, reserved = live_reserved()
local backlog = redis.call('XLEN', KEYS[1])
local wanted = tonumber(ARGV[3])
if backlog + reserved + wanted > tonumber(ARGV[1]) then return {0, backlog, reserved} end
redis.call('HSET', KEYS[2], ARGV[2], wanted)
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), ARGV[2])
return {1, backlog, reserved + wanted}
""")

# ARGV: reservation id, ttl ms. Returns 0 if the reservation had expired (it stays gone).
_RENEW = _script("""
local now = live_reserved()
if not redis.call('ZSCORE', KEYS[3], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[2]), ARGV[1])
return 1
""")

_USAGE = _script("""
local _, reserved = live_reserved()
return {redis.call('XLEN', KEYS[1]), reserved}
""")

# The reservation the current task (and the tasks it starts) draws on in `put`: producers
# stay unaware of it, and a sample put outside any reservation competes for the free room.
_current_reservation: ContextVar[str] = ContextVar("gvloop_reservation", default="")


class QueueFullError(Exception):
    """The stream's unfinished samples and the room reserved by producers fill the bound;
    retry after the trainer catches up."""

    def __init__(self, stream: str, backlog: int, reserved: int = 0, wanted: int = 1) -> None:
        super().__init__(
            f"queue {stream!r} is full ({backlog} unacknowledged samples, {reserved} reserved "
            f"for samples being generated; {wanted} more asked): "
            "the trainer is behind; retry later or raise GVLOOP_MAX_BACKLOG"
        )
        self.stream = stream
        self.backlog = backlog
        self.reserved = reserved


@dataclass(frozen=True)
class Room:
    """How much of the bound is taken, across every producer."""

    bound: int
    backlog: int  # unacknowledged samples in the stream
    reserved: int  # held for samples still being generated (unexpired reservations)

    @property
    def free(self) -> int:
        return self.bound - self.backlog - self.reserved


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
        reservation_ttl_s: float = 30.0,
    ) -> None:
        self._client = client
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self._max_backlog = max_backlog
        self.claim_idle_ms = int(claim_idle_s * 1000)
        self.dead_letter_stream = dead_letter_stream or f"{stream}:dead"
        self.reservation_ttl_ms = int(reservation_ttl_s * 1000)
        self._keys = [stream, f"{stream}:reserved", f"{stream}:reserved:expiry"]
        self._bounded_xadd = client.register_script(_BOUNDED_XADD)
        self._reserve = client.register_script(_RESERVE)
        self._renew = client.register_script(_RENEW)
        self._usage = client.register_script(_USAGE)
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
        """Append a sample, drawing on the current task's reservation if it holds one; raise
        QueueFullError rather than grow past the bound."""
        entry_id = await self._bounded_xadd(
            keys=self._keys,
            args=[
                self._max_backlog,
                _current_reservation.get(),
                PAYLOAD,
                sample.model_dump_json(),
            ],
        )
        if entry_id is None:
            room = await self.room()
            raise QueueFullError(self.stream, room.backlog, room.reserved)
        return _text(entry_id)

    async def room(self) -> Room:
        """The bound, the backlog and every producer's reservations, now."""
        backlog, reserved = await self._usage(keys=self._keys)
        return Room(self._max_backlog, int(backlog), int(reserved))

    @contextlib.asynccontextmanager
    async def reserve(self, samples: int) -> AsyncIterator[None]:
        """Hold room for `samples` puts of this task (and the tasks it starts) until the block
        ends; renewed meanwhile, so only a dead producer's reservation expires. Raises
        QueueFullError at once if the room is not free."""
        reservation = await self.try_reserve(samples)
        previous = _current_reservation.get()
        _current_reservation.set(reservation)
        renewer = asyncio.create_task(self._keep_alive(reservation))
        try:
            yield
        finally:
            renewer.cancel()
            with contextlib.suppress(redis.RedisError):  # else it expires on its own
                await self.release(reservation)
            # set, not reset by token: a streamed response leaves the block in another task
            _current_reservation.set(previous)

    async def try_reserve(self, samples: int) -> str:
        """Reserve room for `samples` for reservation_ttl_s, once; returns the reservation id."""
        reservation = uuid.uuid4().hex
        granted, backlog, reserved = await self._reserve(
            keys=self._keys,
            args=[self._max_backlog, reservation, samples, self.reservation_ttl_ms],
        )
        if not granted:
            raise QueueFullError(self.stream, int(backlog), int(reserved), samples)
        return reservation

    async def release(self, reservation: str) -> None:
        """Give back what a reservation holds unspent."""
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.hdel(self._keys[1], reservation)
            pipe.zrem(self._keys[2], reservation)
            await pipe.execute()

    async def _keep_alive(self, reservation: str) -> None:
        while True:
            await asyncio.sleep(self.reservation_ttl_ms / 3000)
            try:
                alive = await self._renew(
                    keys=self._keys, args=[reservation, self.reservation_ttl_ms]
                )
            except redis.RedisError as exc:
                logger.warning("renewing reservation %s failed (%s); will retry", reservation, exc)
                continue
            if not alive:
                logger.warning(
                        "reservation %s expired before its samples were put: they compete "
                        "for the free room (Redis unreachable longer than %d ms?)",
                    reservation, self.reservation_ttl_ms,
                )  # fmt: skip
                return

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
            live = [e for e in entries if e[1] is not None]
            if len(live) < len(entries):
                # Redis < 7 hands over an entry deleted while pending as a nil without its id,
                # and it stays pending here: reading our own history dead-letters it
                self._own_history_from = "0"
            claimed.extend(live)
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
