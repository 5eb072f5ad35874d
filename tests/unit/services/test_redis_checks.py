"""The verdicts on what a Redis says about itself (`judge`, no server): the real servers with
each setting are in tests/integration/services/test_redis_checks.py."""

from __future__ import annotations

import pytest

from services.redis_checks import RedisFacts, judge, redacted, save_rules, version_tuple

URL = "redis://redis:6379/0"
GOOD = RedisFacts(
    version="7.2.4",
    maxmemory_policy="noeviction",
    maxmemory=0,
    appendonly=True,
    appendfsync="always",
    save="3600 1",
)
DENIED = {"INFO": "NOPERM", "CONFIG GET": "NOPERM"}


@pytest.mark.parametrize(
    ("facts", "verdicts", "values"),
    [
        # compose's Redis: AOF, and RDB beside it
        (GOOD, ["ok", "ok", "ok"], ["7.2.4", "noeviction", "aof (fsync always) + rdb"]),
        # the oldest Redis with XAUTOCLAIM
        (GOOD.model_copy(update={"version": "6.2.0"}), ["ok", "ok", "ok"], None),
        (GOOD.model_copy(update={"version": "6.0.16"}), ["refused", "ok", "ok"], None),
        # every evicting policy, volatile ones too (the job results carry a TTL)
        *[
            (GOOD.model_copy(update={"maxmemory_policy": p}), ["ok", "refused", "ok"], None)
            for p in ("allkeys-lru", "volatile-lru", "allkeys-random", "volatile-ttl")
        ],
        # snapshots only, or nothing: warned, not refused
        (GOOD.model_copy(update={"appendonly": False}), ["ok", "ok", "warning"], None),
        (GOOD.model_copy(update={"appendonly": False, "save": ""}), ["ok", "ok", "warning"], None),
        # CONFIG denied, AOF on: nothing left unknown that matters
        (GOOD.model_copy(update={"save": None, "appendfsync": None}), ["ok", "ok", "ok"], None),
        # CONFIG denied, AOF off: RDB unknown
        (
            GOOD.model_copy(update={"appendonly": False, "save": None}),
            ["ok", "ok", "unchecked"],
            ["7.2.4", "noeviction", "no aof, rdb unknown"],
        ),
        # INFO and CONFIG denied: nothing known, nothing refused
        (
            RedisFacts(unreadable=DENIED),
            ["unchecked"] * 3,
            ["unknown"] * 3,
        ),
    ],
)
def test_verdicts(facts: RedisFacts, verdicts: list[str], values: list[str] | None) -> None:
    found = judge(facts, URL)
    assert [c.verdict for c in found.checks] == verdicts
    if values is not None:
        assert [c.value for c in found.checks] == values
    # a refusal or a warning says what to set
    for check in found.checks:
        assert bool(check.message) == (check.verdict != "ok"), check


def test_what_cannot_be_read_is_one_warning() -> None:
    found = judge(RedisFacts(unreadable=DENIED), URL)
    assert found.refusals == []
    assert found.warnings == [
        f"could not read the settings of Redis at {URL} (INFO: NOPERM; CONFIG GET: NOPERM); "
        "gvloop's queue relies on them, so verify by hand: Redis >= 6.2, maxmemory-policy "
        "noeviction, appendonly yes (or at least an RDB `save` schedule)"
    ]


def test_the_rdb_window_is_the_rule_a_single_write_waits_for() -> None:
    facts = GOOD.model_copy(update={"appendonly": False, "save": "900 1 300 10 60 10000"})
    (warning,) = judge(facts, URL).warnings
    assert "up to 900 s of them" in warning
    # no rule fires on one write: the rule with the fewest changes bounds the wait
    facts = facts.model_copy(update={"save": "60 10000 300 100"})
    (warning,) = judge(facts, URL).warnings
    assert "up to 300 s of them" in warning


@pytest.mark.parametrize(
    ("version", "parsed"),
    [
        ("6.2.14", (6, 2, 14)),
        ("7.0.0", (7, 0, 0)),
        ("7.2.4-rc1", (7, 2, 4)),
        ("255.255.255", (255, 255, 255)),
    ],
)
def test_version_tuple(version: str, parsed: tuple[int, ...]) -> None:
    assert version_tuple(version) == parsed


def test_save_rules() -> None:
    assert save_rules("3600 1 300 100") == [(3600, 1), (300, 100)]
    assert save_rules("") == []


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:s3cret@host:6379/0", "redis://user:***@host:6379/0"),
        ("rediss://:s3cret@host/0", "rediss://:***@host/0"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("unix:///tmp/redis.sock", "unix:///tmp/redis.sock"),
    ],
)
def test_the_password_is_never_shown(url: str, shown: str) -> None:
    assert redacted(url) == shown
    found = judge(GOOD.model_copy(update={"maxmemory_policy": "allkeys-lru"}), url)
    assert "s3cret" not in found.model_dump_json()
    assert found.refusals[0].startswith(f"Redis at {shown} has")
