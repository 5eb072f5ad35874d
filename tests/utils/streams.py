"""Redis stream state a test waits on instead of the clock: a read seen blocked in Redis,
pending entries aged on Redis' own clock."""

from __future__ import annotations

import redis.asyncio as aioredis


async def blocked_in_read(client: aioredis.Redis) -> bool:
    """Whether some client of this server waits in a blocking XREADGROUP (the tests of a
    session run one at a time, so it is the one the test started)."""
    return any("b" in c["flags"] and c["cmd"] == "xreadgroup" for c in await client.client_list())


async def age_pending(
    client: aioredis.Redis, stream: str, group: str, consumer: str, ids: list[str], idle_s: float
) -> None:
    """Make pending entries look delivered `idle_s` ago, as if their consumer had died then:
    XCLAIM to the consumer that holds them, with IDLE (JUSTID: no extra delivery counted)."""
    await client.xclaim(stream, group, consumer, 0, ids, idle=int(idle_s * 1000), justid=True)
