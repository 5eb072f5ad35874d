"""The Redis gvloop trusts: what the queue's promises (nothing lost, nothing trimmed) rest on,
read from the server itself once at start.

- version: the queue's stream commands need Redis 6.2 (XAUTOCLAIM); older is refused.
- maxmemory-policy: anything but `noeviction` is refused. An evicting Redis drops keys, queued
  samples included, without an error to anyone; `noeviction` makes writes fail loudly instead.
  This holds even with `maxmemory 0` (no limit, so no eviction yet): one `CONFIG SET maxmemory`
  later and samples start to vanish, and nothing would check again.
- persistence: AOF, RDB snapshots only, or none. Without AOF a restart loses queued samples,
  which is a choice someone may make (a throwaway run), so it is a warning, not a refusal.

The facts come from INFO, which managed Redis services allow, and CONFIG GET (only for the
snapshot schedule and the fsync policy), which they often rename or deny. What cannot be read
is not refused: one warning says what to verify by hand.
"""

from __future__ import annotations

import logging
import re
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from pydantic import BaseModel
from redis.exceptions import ResponseError

from services.redis_server import connect

logger = logging.getLogger(__name__)

MIN_VERSION = (6, 2)
"""XAUTOCLAIM (services/queue.py `reclaim`: a dead consumer's samples go to another) came in
6.2; every other command the queue and the stores use is older."""

SET_NOEVICTION = (
    "run `redis-cli CONFIG SET maxmemory-policy noeviction` and put `maxmemory-policy "
    "noeviction` in redis.conf (on a managed Redis: its parameter group)"
)
SET_APPENDONLY = (
    "run `redis-cli CONFIG SET appendonly yes` and put `appendonly yes` in redis.conf to lose none"
)

Verdict = Literal["ok", "warning", "unchecked", "refused"]


class UntrustedRedisError(Exception):
    """The Redis lacks what the queue's promises rest on (too old, or it evicts); `gvloop up`
    raises it too for a Redis that does not answer. Not a RedisError: callers that retry
    those (the trainer waits for Redis) must not retry this."""


class RedisFacts(BaseModel):
    """What the server says about itself; None where it would not say."""

    version: str | None = None
    maxmemory_policy: str | None = None
    maxmemory: int | None = None
    """Bytes; 0: no limit."""
    appendonly: bool | None = None
    appendfsync: str | None = None
    save: str | None = None
    """The RDB snapshot schedule, `<seconds> <changes>` pairs; "": no snapshots."""
    unreadable: dict[str, str] = {}
    """Command -> why the server refused it (renamed, denied by an ACL)."""


class RedisCheck(BaseModel):
    """One setting, as found, and what it means for gvloop."""

    setting: Literal["version", "maxmemory-policy", "persistence"]
    value: str
    verdict: Verdict
    message: str = ""
    """Why, and what to set (warning, refused); what to verify by hand (unchecked)."""


class RedisGuarantees(BaseModel):
    """The facts found on one Redis and the verdict on each."""

    url: str
    """Without its password."""
    facts: RedisFacts
    checks: list[RedisCheck]

    @property
    def refusals(self) -> list[str]:
        return [c.message for c in self.checks if c.verdict == "refused"]

    @property
    def warnings(self) -> list[str]:
        """One line per warning; everything that could not be read shares one line."""
        lines = [c.message for c in self.checks if c.verdict == "warning"]
        unchecked = [c.message for c in self.checks if c.verdict == "unchecked"]
        if unchecked:
            why = "; ".join(f"{cmd}: {reason}" for cmd, reason in self.facts.unreadable.items())
            lines.append(
                f"could not read the settings of Redis at {self.url} ({why}); gvloop's queue "
                f"relies on them, so verify by hand: {', '.join(unchecked)}"
            )
        return lines

    def summary(self) -> str:
        """`version 6.2.14, maxmemory-policy noeviction, persistence aof (fsync always)`."""
        return ", ".join(f"{c.setting} {c.value}" for c in self.checks)


def judge(
    facts: RedisFacts, url: str, min_version: tuple[int, ...] = MIN_VERSION
) -> RedisGuarantees:
    """The verdict on each setting (pure: no I/O)."""
    url = redacted(url)
    return RedisGuarantees(
        url=url,
        facts=facts,
        checks=[
            _check_version(facts, url, min_version),
            _check_policy(facts, url),
            _check_persistence(facts, url),
        ],
    )


def _check_version(facts: RedisFacts, url: str, min_version: tuple[int, ...]) -> RedisCheck:
    wanted = ".".join(map(str, min_version))
    if facts.version is None:
        return RedisCheck(
            setting="version", value="unknown", verdict="unchecked", message=f"Redis >= {wanted}"
        )
    if version_tuple(facts.version) < min_version:
        return RedisCheck(
            setting="version",
            value=facts.version,
            verdict="refused",
            message=f"Redis {facts.version} at {url} is too old: gvloop's queue needs Redis "
            f"{wanted} or newer (XAUTOCLAIM, which hands a dead consumer's samples to another, "
            "came in 6.2); upgrade Redis",
        )
    return RedisCheck(setting="version", value=facts.version, verdict="ok")


def _check_policy(facts: RedisFacts, url: str) -> RedisCheck:
    policy = facts.maxmemory_policy
    if policy is None:
        return RedisCheck(
            setting="maxmemory-policy",
            value="unknown",
            verdict="unchecked",
            message="maxmemory-policy noeviction",
        )
    if policy == "noeviction":
        return RedisCheck(setting="maxmemory-policy", value=policy, verdict="ok")
    if facts.maxmemory:
        when = f"once it holds maxmemory ({facts.maxmemory} bytes) it evicts keys"
    else:
        # never evicts today, but nothing would check again after a `CONFIG SET maxmemory`
        when = "with maxmemory 0 it does not evict yet, but once a limit is set it evicts keys"
    return RedisCheck(
        setting="maxmemory-policy",
        value=policy,
        verdict="refused",
        message=f"Redis at {url} has maxmemory-policy {policy}: {when} without telling anyone, "
        "queued samples included. gvloop accepts noeviction only (writes then fail loudly "
        f"instead): {SET_NOEVICTION}",
    )


def _check_persistence(facts: RedisFacts, url: str) -> RedisCheck:
    rules = save_rules(facts.save) if facts.save is not None else None
    if facts.appendonly:
        fsync = f" (fsync {facts.appendfsync})" if facts.appendfsync else ""
        rdb = " + rdb" if rules else ""
        return RedisCheck(setting="persistence", value=f"aof{fsync}{rdb}", verdict="ok")
    if facts.appendonly is None or rules is None:
        # AOF off (or unknown) and the snapshot schedule unreadable: RDB may still be on
        return RedisCheck(
            setting="persistence",
            value="unknown" if facts.appendonly is None else "no aof, rdb unknown",
            verdict="unchecked",
            message="appendonly yes (or at least an RDB `save` schedule)",
        )
    if not rules:
        return RedisCheck(
            setting="persistence",
            value="none",
            verdict="warning",
            message=f'Redis at {url} persists nothing (appendonly no, save ""): a Redis restart '
            f"loses every queued, not yet trained sample; {SET_APPENDONLY}",
        )
    # a trickle of writes waits for the rule with the fewest changes: the longest window
    window = min(rules, key=lambda rule: (rule[1], rule[0]))[0]
    return RedisCheck(
        setting="persistence",
        value=f"rdb (save {facts.save})",
        verdict="warning",
        message=f"Redis at {url} persists by RDB snapshots only (save {facts.save!r}): a crash "
        f"loses the samples queued since the last snapshot, up to {window} s of them; "
        f"{SET_APPENDONLY}",
    )


async def read_facts(client: aioredis.Redis) -> RedisFacts:
    """INFO and CONFIG GET, each allowed to be refused (a connection error is not caught)."""
    facts = RedisFacts()
    try:
        info = await client.info()
    except ResponseError as exc:
        facts.unreadable["INFO"] = _first_line(exc)
    else:
        facts.version = str(info["redis_version"])
        facts.maxmemory_policy = str(info["maxmemory_policy"])
        facts.maxmemory = int(info["maxmemory"])
        facts.appendonly = bool(int(info["aof_enabled"]))
    try:
        # one name per call: Redis < 7 takes a single pattern
        config = {
            name: await _config_get(client, name)
            for name in ("save", "appendfsync", "maxmemory-policy", "maxmemory", "appendonly")
        }
    except ResponseError as exc:
        facts.unreadable["CONFIG GET"] = _first_line(exc)
        return facts
    facts.save, facts.appendfsync = config["save"], config["appendfsync"]
    # INFO denied but CONFIG allowed: the same facts from CONFIG (no version there)
    if facts.maxmemory_policy is None:
        facts.maxmemory_policy = config["maxmemory-policy"]
        facts.maxmemory = int(config["maxmemory"])
        facts.appendonly = config["appendonly"] == "yes"
    return facts


async def inspect_redis(
    url: str,
    timeout_s: float = 5.0,
    retries: int = 5,
    min_version: tuple[int, ...] = MIN_VERSION,
) -> RedisGuarantees:
    """Read and judge the Redis at `url`; raises only what the connection raises."""
    client = connect(url, timeout_s=timeout_s, retries=retries)
    try:
        return judge(await read_facts(client), url, min_version)
    finally:
        await client.aclose()


async def check_redis(
    url: str, timeout_s: float = 5.0, min_version: tuple[int, ...] = MIN_VERSION
) -> RedisGuarantees:
    """At a service's start: log what was found and each warning, or raise UntrustedRedisError
    (logged too: uvicorn's start-up failure buries it in a traceback)."""
    guarantees = await inspect_redis(url, timeout_s=timeout_s, min_version=min_version)
    for warning in guarantees.warnings:
        logger.warning("%s", warning)
    if guarantees.refusals:
        message = "; ".join(guarantees.refusals)
        logger.error("%s", message)
        raise UntrustedRedisError(message)
    logger.info("redis at %s: %s", guarantees.url, guarantees.summary())
    return guarantees


def version_tuple(version: str) -> tuple[int, ...]:
    """`6.2.14` -> (6, 2, 14); a suffix (`7.2.4-rc1`) is dropped."""
    return tuple(int(part) for part in re.findall(r"\d+", version.split("-")[0])[:3])


def save_rules(save: str) -> list[tuple[int, int]]:
    """`3600 1 300 100` -> [(3600, 1), (300, 100)]: snapshot after <seconds> if <changes>."""
    numbers = [int(n) for n in save.split()]
    return list(zip(numbers[::2], numbers[1::2], strict=False))


def redacted(url: str) -> str:
    """The URL without its password, for logs and tables."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


async def _config_get(client: aioredis.Redis, name: str) -> str:
    found = await client.config_get(name)
    value = found.get(name, found.get(name.encode(), b""))
    return value.decode() if isinstance(value, bytes) else str(value)


def _first_line(exc: Exception) -> str:
    text = str(exc).splitlines()[0][:120].rstrip(", ") if str(exc) else ""
    return text or type(exc).__name__
