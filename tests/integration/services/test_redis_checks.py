"""The Redis gvloop trusts, against real redis-servers started with each setting gvloop refuses
or warns about: an evicting policy, no persistence, RDB only, CONFIG renamed, INFO and CONFIG
denied by an ACL; then `gvloop status`'s rows for them, and the services that rely on the queue
(`gvloop up`, the generator, the trainer) refusing to start on an evicting one."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rich.console import Console

from gvloop.status import probe_redis, redis_table
from gvloop.topology import StackPorts
from services.redis_checks import (
    MIN_VERSION,
    SET_APPENDONLY,
    SET_NOEVICTION,
    UntrustedRedisError,
    check_redis,
    version_tuple,
)
from services.redis_server import EmbeddedRedis
from services.settings import CommonSettings
from tests.integration.gvloop.up_process import Up, stack_env
from trainer.settings import TrainerSettings
from trainer.train import Worker

StartRedis = Callable[..., EmbeddedRedis]
NO_PERSISTENCE = ("appendonly no",)  # gvloop's conf already says save ""
EVICTING = ("maxmemory-policy allkeys-lru",)
CONFIG_RENAMED = ('rename-command CONFIG ""',)
# the default user may run everything but INFO and CONFIG, as on a locked-down managed Redis
INFO_AND_CONFIG_DENIED = ("user default on nopass ~* &* +@all -info -config",)


@pytest.fixture
def start_redis(tmp_path: Path) -> Iterator[StartRedis]:
    """`start_redis(*conf_lines)`: a real redis-server on gvloop's conf plus those lines."""
    servers: list[EmbeddedRedis] = []

    def start(*lines: str) -> EmbeddedRedis:
        server = EmbeddedRedis(tmp_path / f"redis{len(servers)}", extra_config=lines)
        servers.append(server.start())
        return server

    yield start
    for server in servers:
        server.stop()


def evicting_message(url: str) -> str:
    return (
        f"Redis at {url} has maxmemory-policy allkeys-lru: with maxmemory 0 it does not evict "
        "yet, but once a limit is set it evicts keys without telling anyone, queued samples "
        f"included. gvloop accepts noeviction only (writes then fail loudly instead): "
        f"{SET_NOEVICTION}"
    )


def table_rows(text: str) -> dict[str, tuple[str, str]]:
    """The Redis table's first line of each row: setting -> (value, verdict)."""
    rows: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.split("│")]
        if len(cells) == 5 and cells[1] in ("server", "version", "maxmemory-policy", "persistence"):
            rows[cells[1]] = (cells[2], cells[3])
    return rows


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


async def test_gvloops_own_redis_is_trusted(
    start_redis: StartRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.redis_checks")
    server = start_redis()
    found = await check_redis(server.url)
    assert [(c.setting, c.verdict) for c in found.checks] == [
        ("version", "ok"),
        ("maxmemory-policy", "ok"),
        ("persistence", "ok"),
    ]
    assert found.checks[2].value == "aof (fsync always)"
    assert not warnings_of(caplog)
    assert (
        f"redis at {server.url}: version {found.facts.version}, maxmemory-policy noeviction, "
        "persistence aof (fsync always)"
    ) in caplog.messages


@pytest.mark.parametrize(
    ("lines", "when"),
    [
        # no limit: it never evicts yet, and is refused all the same
        (
            EVICTING,
            "with maxmemory 0 it does not evict yet, but once a limit is set it evicts keys",
        ),
        (
            ("maxmemory-policy volatile-lru", "maxmemory 64mb"),
            "once it holds maxmemory (67108864 bytes) it evicts keys",
        ),
    ],
)
async def test_an_evicting_redis_is_refused(
    start_redis: StartRedis, caplog: pytest.LogCaptureFixture, lines: tuple[str, ...], when: str
) -> None:
    server = start_redis(*lines)
    with pytest.raises(UntrustedRedisError) as refused:
        await check_redis(server.url)
    policy = lines[0].split()[1]
    assert str(refused.value) == (
        f"Redis at {server.url} has maxmemory-policy {policy}: {when} without telling anyone, "
        "queued samples included. gvloop accepts noeviction only (writes then fail loudly "
        f"instead): {SET_NOEVICTION}"
    )
    assert "CONFIG SET maxmemory-policy noeviction" in str(refused.value)
    # logged as well: a service's log says why it stopped
    assert str(refused.value) in [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


async def test_no_persistence_is_one_warning(
    start_redis: StartRedis, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_redis(*NO_PERSISTENCE)
    found = await check_redis(server.url)  # not refused
    assert found.checks[2].value == "none"
    assert warnings_of(caplog) == [
        f'Redis at {server.url} persists nothing (appendonly no, save ""): a Redis restart '
        f"loses every queued, not yet trained sample; {SET_APPENDONLY}"
    ]


async def test_rdb_only_warns_with_its_window(
    start_redis: StartRedis, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_redis("appendonly no", "save 3600 1", "save 300 100", "save 60 10000")
    found = await check_redis(server.url)
    assert found.checks[2].value == "rdb (save 3600 1 300 100 60 10000)"
    # one write waits for the rule with the fewest changes: 3600 s
    assert warnings_of(caplog) == [
        f"Redis at {server.url} persists by RDB snapshots only (save '3600 1 300 100 60 10000'): "
        f"a crash loses the samples queued since the last snapshot, up to 3600 s of them; "
        f"{SET_APPENDONLY}"
    ]


async def test_config_renamed_still_reads_what_info_says(
    start_redis: StartRedis, caplog: pytest.LogCaptureFixture
) -> None:
    # AOF on (INFO says so): the snapshot schedule CONFIG would give is not needed
    server = start_redis(*CONFIG_RENAMED)
    found = await check_redis(server.url)
    assert found.checks[2].value == "aof"
    assert not warnings_of(caplog)
    # AOF off: whether RDB is on cannot be read, so one warning says what to verify by hand
    server = start_redis(*CONFIG_RENAMED, *NO_PERSISTENCE)
    found = await check_redis(server.url)
    assert found.checks[2].value == "no aof, rdb unknown"
    assert warnings_of(caplog) == [
        f"could not read the settings of Redis at {server.url} (CONFIG GET: unknown command "
        "`CONFIG`, with args beginning with: `GET`, `save`); gvloop's queue relies on them, so "
        "verify by hand: appendonly yes (or at least an RDB `save` schedule)"
    ]
    # the eviction policy is in INFO: an evicting Redis is refused without CONFIG
    server = start_redis(*CONFIG_RENAMED, *EVICTING)
    with pytest.raises(UntrustedRedisError, match="maxmemory-policy allkeys-lru"):
        await check_redis(server.url)


async def test_info_and_config_denied_is_not_refused(
    start_redis: StartRedis, caplog: pytest.LogCaptureFixture
) -> None:
    # evicting, but nothing can tell: not refused, one warning naming all three
    server = start_redis(*INFO_AND_CONFIG_DENIED, *EVICTING)
    found = await check_redis(server.url)
    assert [c.value for c in found.checks] == ["unknown", "unknown", "unknown"]
    assert warnings_of(caplog) == [
        f"could not read the settings of Redis at {server.url} (INFO: this user has no "
        "permissions to run the 'info' command or its subcommand; CONFIG GET: this user has "
        "no permissions to run the 'config' command or its subcommand); gvloop's queue relies "
        "on them, so verify by hand: Redis >= 6.2, maxmemory-policy noeviction, appendonly yes "
        "(or at least an RDB `save` schedule)"
    ]


async def test_a_redis_older_than_needed_is_refused(start_redis: StartRedis) -> None:
    server = start_redis()
    found = await check_redis(server.url)  # the real server meets the real minimum
    version = found.facts.version
    assert version is not None and version_tuple(version) >= MIN_VERSION
    # the same server against a minimum one minor version above its own
    major, minor = version_tuple(version)[:2]
    with pytest.raises(UntrustedRedisError) as refused:
        await check_redis(server.url, min_version=(major, minor + 1))
    assert str(refused.value) == (
        f"Redis {version} at {server.url} is too old: gvloop's queue needs Redis "
        f"{major}.{minor + 1} or newer (XAUTOCLAIM, which hands a dead consumer's samples to "
        "another, came in 6.2); upgrade Redis"
    )


# `gvloop status`: a table row per setting, each with its verdict
async def test_status_rows_show_each_setting_and_verdict(start_redis: StartRedis) -> None:
    server = start_redis(*EVICTING, *NO_PERSISTENCE)
    status = await probe_redis(server.url)
    assert (status.state, status.healthy) == ("refused", False)
    assert status.guarantees is not None
    version = status.guarantees.facts.version
    screen = Console(file=io.StringIO(), width=400)
    screen.print(redis_table(status))
    text = screen.file.getvalue()
    rows = table_rows(text)
    assert rows["server"] == (server.url, "refused")
    assert rows["version"] == (version, "ok")
    assert rows["maxmemory-policy"][0] == "allkeys-lru"
    assert rows["maxmemory-policy"][1].startswith(f"refused: Redis at {server.url} has")
    assert rows["persistence"][0] == "none"
    assert rows["persistence"][1].startswith(f"warning: Redis at {server.url} persists nothing")

    trusted = await probe_redis(start_redis().url)
    assert (trusted.state, trusted.healthy) == ("ok", True)
    # warnings leave the Redis usable: status does not fail on them
    warned = await probe_redis(start_redis(*NO_PERSISTENCE).url)
    assert (warned.state, warned.healthy) == ("warning", True)


async def test_status_of_a_redis_that_does_not_answer(tmp_path: Path) -> None:
    down = await probe_redis(f"unix://{tmp_path}/none.sock", timeout_s=1)
    assert (down.state, down.healthy) == ("down (ConnectionError)", False)
    # no URL and no embedded Redis (docker compose, seen from the host): nothing to judge
    unknown = await probe_redis(None)
    assert (unknown.state, unknown.healthy) == ("not checked (set GVLOOP_REDIS_URL)", True)


def test_gvloop_status_shows_the_redis_rows(start_redis: StartRedis, tmp_path: Path) -> None:
    server = start_redis(*EVICTING)
    env = stack_env(tmp_path / "data", StackPorts.free()) | {"GVLOOP_REDIS_URL": server.url}
    done = subprocess.run(
        [sys.executable, "-m", "gvloop", "status"],
        env=env | {"COLUMNS": "400"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr  # nothing else runs either
    rows = table_rows(done.stdout)
    assert rows["server"] == (server.url, "refused"), done.stdout
    assert rows["maxmemory-policy"][1].startswith("refused: Redis at"), done.stdout
    assert rows["version"][1] == "ok" and rows["persistence"] == ("aof (fsync always)", "ok")


# The services that rely on the queue, started as a user starts them, on an evicting Redis
def test_gvloop_up_refuses_an_evicting_redis(
    start_redis: StartRedis, tiny_model_dir: Path, tmp_path: Path
) -> None:
    server = start_redis(*EVICTING)
    up = Up(
        tiny_model_dir, tmp_path / "data", StackPorts.free(), env={"GVLOOP_REDIS_URL": server.url}
    )
    try:
        assert up.finish(timeout_s=120) == 1, up.output
    finally:
        up.stop()
    assert f"gvloop up: {evicting_message(server.url)}" in up.lines
    assert not (tmp_path / "data" / "redis").exists()  # no embedded Redis started instead


def test_the_generator_refuses_an_evicting_redis(
    start_redis: StartRedis, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # as docker compose starts it: no engine needed, the check comes first
    server = start_redis(*EVICTING)
    env = stack_env(tmp_path / "data", StackPorts.free()) | {
        "GVLOOP_REDIS_URL": server.url,
        "GVLOOP_MODEL": str(tiny_model_dir),
    }
    done = subprocess.run(
        [sys.executable, "-m", "gvloop", "agent-a", "serve"],
        env=env,
        cwd=tmp_path,  # no ./.env of the repository
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 3, output  # uvicorn's code for a failed start-up
    (line,) = [line for line in output.splitlines() if "ERROR" in line and "| Redis at" in line]
    assert line.endswith(f"services.redis_checks | {evicting_message(server.url)}")


async def test_the_trainer_refuses_an_evicting_redis(
    start_redis: StartRedis, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # in this process (the subprocess' imports alone take longer than the rest of the file)
    server = start_redis(*EVICTING)
    common = CommonSettings(
        _env_file=None,  # type: ignore[call-arg]
        model=str(tiny_model_dir),
        data_dir=tmp_path,
        redis_url=server.url,
    )
    cfg = TrainerSettings(
        _env_file=None,  # type: ignore[call-arg]
        swap=False,
        metrics_port=0,
        device="cpu",
        progress="off",
    )
    with pytest.raises(UntrustedRedisError) as refused:
        await Worker(cfg, common).setup()
    assert str(refused.value) == evicting_message(server.url)
