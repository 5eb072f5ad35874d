"""`gvloop status`: every component's /health and /metrics, in one table. The URLs and tokens come
from the same settings the components read, so it works beside `gvloop up` and `docker compose
up` alike; beside `gvloop up` it shows how often the launcher restarted each component too
(`docker compose ps` shows compose's own restarts)."""

from __future__ import annotations

import asyncio

import httpx
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel
from redis.exceptions import RedisError
from rich.markup import escape
from rich.table import Table

from gvloop.restarts import ComponentRestarts
from gvloop.topology import StackTopology
from services.clients import bearer
from services.redis_checks import RedisGuarantees, inspect_redis, redacted
from services.redis_server import EmbeddedRedis
from services.settings import CommonSettings

Metrics = dict[str, float]


class Target(BaseModel):
    """Where one component answers."""

    name: str
    health_url: str | None
    """None: the component serves no /health (the trainer); its /metrics answering is health."""
    metrics_url: str
    token: str | None = None


class ComponentStatus(BaseModel):
    name: str
    url: str
    state: str
    """`ok`, the health body's own status (`loading`, `degraded`), or why nothing answered."""
    healthy: bool
    metrics: Metrics = {}


def targets(topology: StackTopology) -> list[Target]:
    """Every component's /health and /metrics, and the token that opens them."""
    found = [
        Target(
            name=name,
            health_url=f"{endpoint.url}/health",
            metrics_url=f"{endpoint.url}/metrics",
            token=token,
        )
        for name, endpoint, token in (
            ("engine", topology.engine, None),
            ("generator", topology.generator, topology.generator_token),
            ("verifier", topology.verifier, topology.verifier_token),
        )
    ]
    if topology.trainer_metrics.port:  # 0: the trainer serves no metrics
        url = topology.trainer_metrics.url
        found.append(Target(name="trainer", health_url=None, metrics_url=f"{url}/metrics"))
    return found


def parse_metrics(text: str) -> Metrics:
    """Prometheus text -> {sample name: value}, summed over labels (a counter's outcomes add up
    to its total), except that `name{part="total"}`-style labelled series stay apart as
    `name{label=value}`."""
    metrics: Metrics = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith(("_bucket", "_created")):
                continue
            metrics[sample.name] = metrics.get(sample.name, 0.0) + sample.value
            for label, value in sample.labels.items():
                key = f"{sample.name}{{{label}={value}}}"
                metrics[key] = metrics.get(key, 0.0) + sample.value
    return metrics


async def probe(client: httpx.AsyncClient, target: Target) -> ComponentStatus:
    """One component's health and metrics; a component that does not answer is a row too."""
    headers = bearer(target.token)
    url = target.health_url or target.metrics_url
    state, healthy = "ok", True
    try:
        if target.health_url is not None:
            response = await client.get(target.health_url, headers=headers)
            body = _json_or_none(response)
            healthy = response.status_code == 200
            status = body.get("status") if isinstance(body, dict) else None
            # vLLM's /health answers 200 with an empty body
            state = str(status) if status else "ok" if healthy else f"HTTP {response.status_code}"
        response = await client.get(target.metrics_url, headers=headers)
        metrics = parse_metrics(response.text) if response.status_code == 200 else {}
        if target.health_url is None and response.status_code != 200:
            state, healthy = f"HTTP {response.status_code}", False
        raised = alarm(metrics)
        if raised is not None:
            state, healthy = raised, False
    except httpx.TransportError as exc:
        return ComponentStatus(
            name=target.name, url=url, state=f"down ({type(exc).__name__})", healthy=False
        )
    return ComponentStatus(name=target.name, url=url, state=state, healthy=healthy, metrics=metrics)


async def collect(targets: list[Target], timeout_s: float = 5.0) -> list[ComponentStatus]:
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        return list(await asyncio.gather(*(probe(client, t) for t in targets)))


# A component's own alarms, read from its metrics: (metric key, what the state column says).
ALARMS = [("gvloop_trainer_checkpoint_failing", "checkpoints failing")]


def alarm(metrics: Metrics) -> str | None:
    """What is wrong, by the component's own metrics (a gauge at 1); None: nothing."""
    raised = [text for key, text in ALARMS if metrics.get(key, 0) > 0]
    return ", ".join(raised) or None


def _json_or_none(response: httpx.Response) -> object:
    try:
        return response.json()
    except ValueError:
        return None


def _fmt(value: float) -> str:
    return f"{value:.0f}" if value == int(value) and abs(value) < 1e9 else f"{value:.3g}"


# What each component's row shows: (label, metric key) pairs; absent metrics are left out.
FIGURES: dict[str, list[tuple[str, str]]] = {
    "engine": [
        ("running", "vllm:num_requests_running"),
        ("waiting", "vllm:num_requests_waiting"),
        ("prompt tok", "vllm:prompt_tokens_total"),
        ("gen tok", "vllm:generation_tokens_total"),
    ],
    "generator": [
        ("version", "gvloop_generator_weight_version"),
        ("samples", "gvloop_generator_samples_total"),
        ("queued", "gvloop_generator_samples_total{queued=true}"),
        ("in flight", "gvloop_generator_problems_in_flight"),
        ("swaps ok", "gvloop_generator_swaps_total{outcome=ok}"),
    ],
    "verifier": [
        ("requests", "gvloop_verifier_requests_total"),
        ("verified", "gvloop_verifier_verifications_total"),
        ("errors", "gvloop_verifier_errors_total"),
    ],
    "trainer": [
        ("step", "gvloop_trainer_step"),
        ("loss", "gvloop_trainer_loss{part=total}"),
        ("acc", "gvloop_trainer_accuracy"),
        ("tok/s", "gvloop_trainer_tokens_per_second"),
        ("lag", "gvloop_trainer_queue_lag"),
        ("version", "gvloop_trainer_weight_version"),
        ("uncommitted", "gvloop_trainer_uncommitted_steps"),
    ],
}


def figures(row: ComponentStatus) -> str:
    """The row's key figures, as `label value, ...`."""
    wanted = FIGURES.get(row.name, [])
    shown = [(label, row.metrics[key]) for label, key in wanted if key in row.metrics]
    return ", ".join(f"{label} {_fmt(value)}" for label, value in shown) or "-"


def status_table(
    rows: list[ComponentStatus], restarts: dict[str, ComponentRestarts] | None = None
) -> Table:
    """`restarts`: those of a running `gvloop up` (a column of its own); None: none runs."""
    table = Table(title="gvloop status")
    columns = ["component", "url", "state", "figures"]
    for column in columns if restarts is None else [*columns, "restarts"]:
        table.add_column(column)
    for row in rows:
        state = f"[green]{row.state}[/]" if row.healthy else f"[red]{row.state}[/]"
        cells = [row.name, row.url, state, figures(row)]
        if restarts is not None:
            restarted = restarts.get(row.name)
            cells.append("0" if restarted is None else restarted.summary())
        table.add_row(*cells)
    return table


# Redis: what the queue's promises rest on (services/redis_checks.py), read from the server
class RedisStatus(BaseModel):
    url: str | None
    """Without its password; None: no GVLOOP_REDIS_URL and no embedded Redis running."""
    state: str
    """`ok`, `warning`, `refused`, `unchecked`, or why nothing answered."""
    healthy: bool
    guarantees: RedisGuarantees | None = None


def redis_url(common: CommonSettings) -> str | None:
    """GVLOOP_REDIS_URL, else the embedded Redis if one runs in the data directory."""
    if common.redis_url:
        return common.redis_url
    embedded = EmbeddedRedis(common.data_dir / "redis")
    return embedded.url if embedded.is_running() else None


async def probe_redis(url: str | None, timeout_s: float = 5.0) -> RedisStatus:
    """The Redis' version, eviction policy and persistence, each judged; no retries."""
    if url is None:
        # beside docker compose the Redis is not reachable from the host: nothing to judge
        return RedisStatus(url=None, state="not checked (set GVLOOP_REDIS_URL)", healthy=True)
    try:
        found = await inspect_redis(url, timeout_s=timeout_s, retries=0)
    except RedisError as exc:
        return RedisStatus(url=redacted(url), state=f"down ({type(exc).__name__})", healthy=False)
    verdicts = {check.verdict for check in found.checks}
    state = next((v for v in ("refused", "warning", "unchecked") if v in verdicts), "ok")
    return RedisStatus(url=found.url, state=state, healthy=not found.refusals, guarantees=found)


VERDICT_STYLE = {"ok": "green", "warning": "yellow", "unchecked": "yellow", "refused": "red"}


def redis_table(status: RedisStatus) -> Table:
    """One row per setting gvloop relies on: the value found and whether it is OK (why not)."""
    table = Table(title="redis")
    for column in ("setting", "value", "verdict"):
        table.add_column(column)
    style = VERDICT_STYLE.get(status.state, "yellow" if status.healthy else "red")
    table.add_row("server", escape(status.url or "-"), f"[{style}]{escape(status.state)}[/]")
    if status.guarantees is None:
        return table
    unreadable = "; ".join(f"{k}: {v}" for k, v in status.guarantees.facts.unreadable.items())
    for check in status.guarantees.checks:
        why = check.message
        if check.verdict == "unchecked":
            why = f"could not be read ({unreadable}), verify by hand: {check.message}"
        verdict = f"[{VERDICT_STYLE[check.verdict]}]{check.verdict}[/]"
        # escaped: an error text from the server may hold [brackets]
        table.add_row(
            check.setting, escape(check.value), f"{verdict}: {escape(why)}" if why else verdict
        )
    return table
