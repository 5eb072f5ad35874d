"""The soak's invariants, checked at the end from four records that do not depend on each other:
the clients' own log (what each answer said was queued), the trainer's checkpoints as the
watcher read them (what each commits: the exactly-once ledger, `TrainerState.committed_ids`),
the trainer's JSON lines (which samples were skipped, and why), and Redis (the dead-letter
stream, and what the stream still holds).

Samples. Every stream id a client was told was queued is exactly one of: trained (committed
by exactly one checkpoint, no skip record), skipped by a stated rule (a `skip` record: stale,
unusable, no_contrast; the trainer acknowledges those at once, so a checkpoint rarely records
them), or dead-lettered with a reason. A sample committed by two checkpoints was trained
twice; one still in the stream after the drain, or nowhere, was lost. Committed ids that no
answer named are allowed only up to the samples whose fate the answers left open (answered
`queued: false` after a Redis failure, or in requests that got no answer because the generator
was killed under them).

Requests. Each got an answer within the client's timeout: 2xx; 429 with Retry-After; 502/503
(a dependency down or failing, which the API promises); or no answer only while the generator
itself was down (killed by the soak, until it answered again). A 500, another 4xx, a 429
without Retry-After, a timeout, or a dropped connection at any other time breaks it.

Versions and checkpoints. The version agent A says it serves (GET /weights) never goes back,
and every checkpoint the watcher read, and the newest one after each fault and at the end,
loads (its state parses, each weights file is whole).
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.soak_kit.chaos import Fault
from bench.soak_kit.load import RequestRecord
from bench.soak_kit.watch import Commit

TIMEOUTS = {"ReadTimeout", "WriteTimeout", "ConnectTimeout", "PoolTimeout", "TimeoutException"}
DEPENDENCY_STATUSES = {502, 503}


@dataclass
class Accounting:
    queued: int = 0
    trained: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    dead_lettered: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    left_in_stream: list[str] = field(default_factory=list)
    trained_twice: list[str] = field(default_factory=list)
    unreported_committed: int = 0
    open_fate: int = 0
    """Samples the answers left open: the bound on `unreported_committed`."""
    requests: Counter[str] = field(default_factory=Counter)
    bad_requests: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def newly_committed(commits: list[Commit]) -> Counter[str]:
    """How many checkpoints newly committed each stream id. A checkpoint repeats the ids of
    the one before that are not acknowledged yet (a Redis outage, a crash before the ack):
    only ids absent from the checkpoint read just before count as new."""
    counts: Counter[str] = Counter()
    before: set[str] = set()
    for commit in sorted(commits, key=lambda c: c.seen_at):
        ids = set(commit.committed_ids)
        counts.update(ids - before)
        before = ids
    return counts


def read_skips(metrics_file: Path) -> dict[str, str]:
    """Stream id -> reason, from the trainer's `skip` records."""
    skips: dict[str, str] = {}
    if not metrics_file.exists():
        return skips
    for line in metrics_file.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == "skip":
            skips[record["id"]] = record["reason"]
    return skips


def status_of(record: RequestRecord) -> str:
    return str(record.status) if record.status is not None else (record.error or "no answer")


def generator_down(faults: list[Fault], records: list[RequestRecord]) -> list[tuple[float, float]]:
    """From each generator kill to the first 200 answered after it."""
    windows = []
    for fault in faults:
        if fault.kind != "generator_kill" or not fault.injected:
            continue
        back = min(
            (r.ended for r in records if r.status == 200 and r.started > fault.started),
            default=float("inf"),
        )
        windows.append((fault.started - 1.0, back))
    return windows


def check_request(record: RequestRecord, down: list[tuple[float, float]]) -> str | None:
    """Why this request breaks the promise (None: it keeps it)."""
    status = record.status
    if status is not None:
        if 200 <= status < 300 or status in DEPENDENCY_STATUSES:
            return None
        if status == 429:
            return None if record.retry_after else "429 without Retry-After"
        return f"answered {status}"
    if record.error in TIMEOUTS:
        return f"no answer within the client's timeout ({record.error})"
    if any(start <= record.ended and record.started <= end for start, end in down):
        return None  # the generator was killed under it: a connection dropped, as it must
    return f"no answer ({record.error}) while the generator ran"


def account(
    records: list[RequestRecord],
    commits: list[Commit],
    skips: dict[str, str],
    dead: dict[str, str],
    left: set[str],
    faults: list[Fault],
    served: list[tuple[float, int]],
    checkpoint_problems: list[str],
    n_per_request: int = 2,
) -> Accounting:
    result = Accounting()
    down = generator_down(faults, records)

    # requests
    for record in records:
        result.requests[status_of(record)] += 1
        why = check_request(record, down)
        if why is not None:
            result.bad_requests.append(f"{record.kind} at {record.started:.0f}: {why}")
    if result.bad_requests:
        result.problems.append(
            f"{len(result.bad_requests)} requests without a promised answer, e.g. "
            f"{result.bad_requests[0]}"
        )

    # samples
    reported = {i for r in records for i in r.queued}
    result.queued = len(reported)
    committed = newly_committed(commits)
    for sample in sorted(reported):
        if committed[sample] > 1:
            result.trained_twice.append(sample)
        if sample in skips:
            # set aside and acknowledged at once, usually before any checkpoint records it
            result.skipped[skips[sample]] += 1
        elif committed[sample] >= 1:
            result.trained += 1
        elif sample in dead:
            result.dead_lettered[dead[sample].splitlines()[0][:60]] += 1
        elif sample in left:
            result.left_in_stream.append(sample)
        else:
            result.lost.append(sample)
    result.unreported_committed = len(committed.keys() - reported)
    no_answer = sum(1 for r in records if r.status is None)
    result.open_fate = sum(r.unconfirmed for r in records) + n_per_request * no_answer
    for label, ids in (
        ("committed by more than one checkpoint (trained twice)", result.trained_twice),
        ("still in the stream after the drain", result.left_in_stream),
        ("lost (neither committed, dead-lettered nor in the stream)", result.lost),
    ):
        if ids:
            result.problems.append(f"{len(ids)} samples {label}, e.g. {ids[:3]}")
    if result.unreported_committed > result.open_fate:
        result.problems.append(
            f"{result.unreported_committed} committed samples no answer named, more than the "
            f"{result.open_fate} whose fate the answers left open"
        )

    # versions and checkpoints
    for (_t0, v0), (t1, v1) in itertools.pairwise(served):
        if v1 < v0:
            result.problems.append(f"served version went back from {v0} to {v1} at {t1:.0f}")
    for fault in faults:
        result.problems.extend(f"{fault.kind}: {p}" for p in fault.problems)
    broken = [f"{c.path}: {c.problem}" for c in commits if c.problem]
    result.problems.extend(f"checkpoint would not load: {p}" for p in broken + checkpoint_problems)
    return result
