"""The counts N(x, a) of the exploration bonus: how often the trainer has trained on final answer
a to problem x. The one owner of their Redis keys, all under `<stream>:answers`:

    <stream>:answers              sorted set: problem key -> version that last counted it
    <stream>:answers:version      the newest checkpoint version whose counts are in
    <stream>:answers:p:<problem>  hash: answer -> count; the field "" pools the answers past
                                  max_answers

Bounded: at most max_problems hashes (those counted longest ago are dropped) of at most
max_answers + 1 fields, each field at most 64 bytes (`trainer.exploration.answer_key`).

Exactly once, like the samples' acknowledgement (`trainer.intake`): a step's increments stay in
this process (`uncommitted`) until a checkpoint holding them is on disk (`TrainerState.
answer_counts`, one batch per checkpoint version); then one script adds each batch whose version
is above `<stream>:answers:version` and raises it, in one atomic step. A trainer killed before
the checkpoint loses the increments with the steps, and trains those samples again; one killed
after it adds them from the checkpoint on restart, and a script that ran but whose answer was
lost is a no-op the second time. Redis errors never escape: logged, and tried again at the next
step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter

import redis.asyncio as redis
from pydantic import BaseModel
from redis.exceptions import RedisError

from services.clients import RetryPolicy
from trainer.exploration import Outcome
from trainer.metrics import TrainerMetrics

logger = logging.getLogger("trainer")

POOL = ""  # the field of a problem's answers past max_answers (an answer is never empty)

# KEYS: index, version. ARGV: hash prefix, max_answers, max_problems, number of batches, then
# per batch: version, entries, then per entry: problem, answer, count. Returns batches applied.
_APPLY = """
local applied = tonumber(redis.call('GET', KEYS[2]) or '-1')
local max_answers = tonumber(ARGV[2])
local i, done = 5, 0
for _ = 1, tonumber(ARGV[4]) do
  local version, entries = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  i = i + 2
  if version > applied then
    for _ = 1, entries do
      local problem, answer = ARGV[i], ARGV[i + 1]
      local key = ARGV[1] .. problem
      if redis.call('HEXISTS', key, answer) == 0 then
        local distinct = redis.call('HLEN', key) - redis.call('HEXISTS', key, '')
        if distinct >= max_answers then answer = '' end
      end
      redis.call('HINCRBY', key, answer, ARGV[i + 2])
      redis.call('ZADD', KEYS[1], version, problem)
      i = i + 3
    end
    applied, done = version, done + 1
    redis.call('SET', KEYS[2], version)
  else
    i = i + 3 * entries
  end
end
local excess = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[3])
if excess > 0 then
  local dropped = redis.call('ZPOPMIN', KEYS[1], excess)
  for j = 1, #dropped, 2 do redis.call('DEL', ARGV[1] .. dropped[j]) end
end
return done
"""

# KEYS: version. ARGV: hash prefix, max_answers, then per outcome: problem, answer.
# Returns {version applied (-1: none), then each outcome's count (pooled past max_answers)}.
_SEEN = """
local out = {tonumber(redis.call('GET', KEYS[1]) or '-1')}
for i = 3, #ARGV, 2 do
  local key = ARGV[1] .. ARGV[i]
  local n = redis.call('HGET', key, ARGV[i + 1])
  if not n then
    local distinct = redis.call('HLEN', key) - redis.call('HEXISTS', key, '')
    n = distinct >= tonumber(ARGV[2]) and redis.call('HGET', key, '') or 0
  end
  out[#out + 1] = tonumber(n)
end
return out
"""

# KEYS: index, version. ARGV: hash prefix. Returns the problems dropped.
_CLEAR = """
local problems = redis.call('ZRANGE', KEYS[1], 0, -1)
for _, problem in ipairs(problems) do redis.call('DEL', ARGV[1] .. problem) end
redis.call('DEL', KEYS[1], KEYS[2])
return #problems
"""


class AnswerCountBatch(BaseModel):
    """The answer counts a checkpoint version commits: [problem, answer, n] entries."""

    version: int
    counts: list[tuple[str, str, int]]


class AnswerCounts:
    """N(x, a) in Redis, and the increments this trainer holds until a checkpoint commits them
    (the counts' ledger, as `Intake` is the samples')."""

    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        metrics: TrainerMetrics,
        *,
        max_answers: int,
        max_problems: int,
        backoff: RetryPolicy | None = None,
    ) -> None:
        self._client = client
        self.metrics = metrics
        self.backoff = backoff or RetryPolicy(backoff_s=0.5, max_backoff_s=30.0)
        self.max_answers = max_answers
        self.max_problems = max_problems
        self.index, self.version_key = f"{stream}:answers", f"{stream}:answers:version"
        self.prefix = f"{stream}:answers:p:"
        self._apply = client.register_script(_APPLY)
        self._seen = client.register_script(_SEEN)
        self._clear = client.register_script(_CLEAR)
        self.uncommitted: Counter[Outcome] = Counter()
        """Outcomes trained by the steps since the last checkpoint."""
        self.unapplied: list[AnswerCountBatch] = []
        """Batches a checkpoint on disk commits that may not be in Redis yet."""

    async def resume(self, version: int, batches: list[AnswerCountBatch]) -> None:
        """Start from the checkpoint of `version` and the batches it commits. Counts that Redis
        holds for a later version belong to another run (or to checkpoints since deleted):
        dropped, since this run's steps after `version` will count again."""
        self.unapplied = list(batches)
        applied = await self.applied_version()
        if applied > version:
            dropped = await self._clear(keys=[self.index, self.version_key], args=[self.prefix])
            logger.warning(
                "answer counts in Redis are of version %d, later than this checkpoint's (v%d): "
                "another run's, dropped (%d problems)",
                applied, version, dropped,
            )  # fmt: skip

    async def applied_version(self) -> int:
        """The newest checkpoint version whose counts are in Redis (-1: none)."""
        raw = await self._client.get(self.version_key)
        return -1 if raw is None else int(raw)

    async def seen(self, keys: list[Outcome], stop: asyncio.Event) -> list[int] | None:
        """N(x, a) of each outcome before the current step: Redis' counts, plus those of the
        checkpoints not in Redis yet and of the steps since the last checkpoint. While Redis
        fails, tried again with backoff; None if `stop` is set meanwhile."""
        attempt = 0
        while not stop.is_set():
            try:
                return await self._seen_now(keys)
            except RedisError as exc:
                attempt += 1
                self._redis_failed("read", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.backoff.delay(attempt))
        return None

    async def _seen_now(self, keys: list[Outcome]) -> list[int]:
        if not keys:
            return []
        args: list[str | int] = [self.prefix, self.max_answers]
        for problem, answer in keys:
            args += [problem, answer]
        applied, *counts = await self._seen(keys=[self.version_key], args=args)
        pending = Counter(self.uncommitted)
        for batch in self.unapplied:
            if batch.version > int(applied):
                pending.update({(p, a): n for p, a, n in batch.counts})
        return [int(n) + pending[k] for n, k in zip(counts, keys, strict=True)]

    def record_trained(self, keys: list[Outcome | None]) -> None:
        """A step trained samples with these outcomes (None: no answer, not counted)."""
        self.uncommitted.update(k for k in keys if k is not None)

    def commit_batches(self, version: int) -> list[AnswerCountBatch]:
        """What the checkpoint of `version` records: the batches not known to be in Redis and
        the steps' since the last checkpoint."""
        if not self.uncommitted:
            return list(self.unapplied)
        counts = [(p, a, n) for (p, a), n in sorted(self.uncommitted.items())]
        return [*self.unapplied, AnswerCountBatch(version=version, counts=counts)]

    def mark_committed(self, batches: list[AnswerCountBatch]) -> None:
        """The checkpoint recording `batches` is on disk."""
        self.unapplied = list(batches)
        self.uncommitted = Counter()

    async def apply_committed(self) -> bool:
        """Add every committed batch to Redis (each once); False (logged) if Redis fails."""
        if not self.unapplied:
            return True
        args: list[str | int] = [
            self.prefix, self.max_answers, self.max_problems, len(self.unapplied)
        ]  # fmt: skip
        for batch in self.unapplied:
            args += [batch.version, len(batch.counts)]
            for entry in batch.counts:
                args += entry
        try:
            await self._apply(keys=[self.index, self.version_key], args=args)
        except RedisError as exc:
            self._redis_failed("update", exc)
            return False
        self.unapplied = []
        return True

    def _redis_failed(self, what: str, exc: BaseException) -> None:
        self.metrics.errors.labels("redis").inc()
        logger.warning(
            "redis answer counts %s failed (%s: %s); will retry", what, type(exc).__name__, exc
        )

    async def aclose(self) -> None:
        await self._client.aclose()
