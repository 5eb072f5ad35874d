"""The soak's figures and tables: faults by kind with the worst recovery after each, samples
and requests as the accounting found them, and each component's memory, descriptors and the
data directory over time, as slopes after warm-up.

Recovery after a fault counts from the moment it was taken away (a kill: when sent; a stop or
a full disk: when it ended; a Redis kill: when Redis was restarted) to: `request`, the end of
the first request started after it that was answered 200; `step`, the first training step the
trainer logged after it; `version`, the first time GET /weights answered a version above the
one served when the fault began. `-`: not seen before the run ended."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from bench.soak_kit.accounting import Accounting
from bench.soak_kit.chaos import KINDS, Fault
from bench.soak_kit.load import RequestRecord
from bench.soak_kit.watch import Watch

MIB = 2**20


@dataclass
class Recovery:
    request_s: float | None
    step_s: float | None
    version_s: float | None


@dataclass
class Slope:
    name: str
    segments: int
    """Processes that ran it (1 + its restarts)."""
    start: float
    end: float
    """Fitted value at the start and end of the longest segment after warm-up."""
    per_min: float
    growth_pct: float
    span_s: float


def recovery(
    fault: Fault, records: list[RequestRecord], steps: list[float], served: list[tuple[float, int]]
) -> Recovery:
    def first(times: list[float]) -> float | None:
        return min(times) - fault.ended if times else None

    before = [v for t, v in served if t <= fault.started]
    version = before[-1] if before else 0
    return Recovery(
        first([r.ended for r in records if r.status == 200 and r.started >= fault.ended]),
        first([t for t in steps if t > fault.ended]),
        first([t for t, v in served if t > fault.ended and v > version]),
    )


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares line through (t, y): (intercept at the first t, slope per second)."""
    t0 = points[0][0]
    xs = [t - t0 for t, _ in points]
    ys = [y for _, y in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
    return my - slope * mx, slope


def slope_of(
    name: str, series: dict[int, list[tuple[float, float]]], warmup_s: float
) -> Slope | None:
    """The growth of the longest-lived process' series once its own warm-up is over: a
    restarted component starts a new series (its memory starts from nothing again)."""
    trimmed = {
        key: [(t, y) for t, y in points if t >= points[0][0] + warmup_s]
        for key, points in series.items()
    }
    longest = max(trimmed.values(), key=lambda p: p[-1][0] - p[0][0] if len(p) > 1 else 0)
    if len(longest) < 3:
        return None
    intercept, per_s = fit(longest)
    span = longest[-1][0] - longest[0][0]
    end = intercept + per_s * span
    mean = sum(y for _, y in longest) / len(longest)
    growth = 100 * (end - intercept) / mean if mean else 0.0
    return Slope(name, len(series), intercept, end, per_s * 60, growth, span)


def slopes(watch: Watch, warmup_s: float) -> tuple[list[Slope], list[Slope], Slope | None]:
    """Memory (MiB) and descriptors per component, and the data directory (MiB)."""
    rss: dict[str, dict[int, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    fds: dict[str, dict[int, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for u in watch.usage:
        if not u.ready:  # still loading: its warm-up counts from its first health answer
            continue
        rss[u.component][u.pid].append((u.at, u.rss / MIB))
        fds[u.component][u.pid].append((u.at, float(u.fds)))
    memory = [s for name in rss if (s := slope_of(name, rss[name], warmup_s))]
    files = [s for name in fds if (s := slope_of(name, fds[name], warmup_s))]
    disk = (
        slope_of("data dir", {0: [(t, b / MIB) for t, b in watch.disk]}, warmup_s)
        if watch.disk
        else None
    )
    return memory, files, disk


def table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def fault_table(faults: list[Fault], recoveries: list[Recovery]) -> str:
    rows = []
    for kind in KINDS:
        mine = [(f, r) for f, r in zip(faults, recoveries, strict=True) if f.kind == kind]
        done = [(f, r) for f, r in mine if f.injected]

        def worst(pick: str, done: list[tuple[Fault, Recovery]] = done) -> str:
            values = [getattr(r, pick) for _, r in done]
            if not values:
                return "-"
            if any(v is None for v in values):
                return "not seen"
            return seconds(max(values))

        rows.append(
            [kind, len(done), len(mine) - len(done), worst("request_s"), worst("step_s"),
             worst("version_s")]
        )  # fmt: skip
    return table(
        ["fault", "injected", "not done", "worst s to a 200", "to a step", "to a new version"],
        rows,
    )


def sample_table(a: Accounting) -> str:
    rows: list[list[object]] = [
        ["queued (answers said so)", a.queued],
        ["trained exactly once", a.trained],
        *[[f"skipped: {reason}", n] for reason, n in sorted(a.skipped.items())],
        *[[f"dead-lettered: {reason}", n] for reason, n in sorted(a.dead_lettered.items())],
        ["trained twice", len(a.trained_twice)],
        ["left in the stream", len(a.left_in_stream)],
        ["lost", len(a.lost)],
        ["committed, named by no answer", f"{a.unreported_committed} (open: {a.open_fate})"],
    ]
    return table(["samples", "count"], rows)


def request_table(a: Accounting) -> str:
    rows = [[status, n] for status, n in sorted(a.requests.items())]
    rows.append(["without a promised answer", len(a.bad_requests)])
    return table(["requests by status", "count"], rows)


def usage_table(memory: list[Slope], files: list[Slope], disk: Slope | None) -> str:
    by_name = {s.name: s for s in files}
    rows = []
    for s in sorted(memory, key=lambda s: s.name):
        f = by_name.get(s.name)
        rows.append(
            [s.name, s.segments, f"{s.start:.0f} -> {s.end:.0f}", f"{s.per_min:+.2f}",
             f"{s.growth_pct:+.1f}%", f"{s.span_s:.0f}",
             f"{f.start:.0f} -> {f.end:.0f} ({f.growth_pct:+.1f}%)" if f else "-"]
        )  # fmt: skip
    if disk is not None:
        rows.append(
            [disk.name, 1, f"{disk.start:.0f} -> {disk.end:.0f}", f"{disk.per_min:+.2f}",
             f"{disk.growth_pct:+.1f}%", f"{disk.span_s:.0f}", "-"]
        )  # fmt: skip
    return table(
        ["", "processes", "MiB (fit, after warm-up)", "MiB/min", "growth", "over s", "fds"],
        rows,
    )


# growth below these is noise, whatever its share (a few MiB of allocator slack, a socket)
FLOORS = {"RSS": 32.0, "open fds": 16.0, "size": 64.0}


def growth_problems(
    memory: list[Slope], files: list[Slope], disk: Slope | None, bound_pct: float, min_span_s: float
) -> list[str]:
    """Series that grew more than `bound_pct` (and more than their floor) over a span long
    enough to judge."""
    problems = []
    for kind, series in (("RSS", memory), ("open fds", files), ("size", [disk] if disk else [])):
        for s in series:
            grew = s.end - s.start
            if s.span_s >= min_span_s and s.growth_pct > bound_pct and grew > FLOORS[kind]:
                problems.append(
                    f"{s.name} {kind} grew {s.growth_pct:.1f}% over {s.span_s:.0f}s "
                    f"({s.per_min:+.2f}/min), over the {bound_pct:g}% bound"
                )
    return problems
