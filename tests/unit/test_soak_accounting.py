"""The soak's pure parts (`bench/soak_kit/`): the exactly-once ledger read from checkpoints,
which answers keep the API's promise, the fault schedule, and the memory slope."""

from __future__ import annotations

import itertools

from bench.soak_kit.accounting import account, check_request, newly_committed
from bench.soak_kit.chaos import KINDS, Fault, plan
from bench.soak_kit.load import RequestRecord
from bench.soak_kit.report import slope_of
from bench.soak_kit.watch import Commit


def commit(at: float, *ids: str) -> Commit:
    return Commit(f"step_{at:.0f}", int(at), int(at), list(ids), at, None)


def request(status: int | None, error: str | None = None, **kw: object) -> RequestRecord:
    return RequestRecord(0, "problems", {}, 10.0, 1.0, status, error, **kw)  # type: ignore[arg-type]


class TestNewlyCommitted:
    def test_ids_repeated_until_acknowledged_count_once(self) -> None:
        # the second checkpoint repeats "b" (not acknowledged yet): still one commit
        assert newly_committed([commit(1, "a", "b"), commit(2, "b", "c")]) == {
            "a": 1,
            "b": 1,
            "c": 1,
        }

    def test_an_id_committed_again_later_was_trained_twice(self) -> None:
        counts = newly_committed([commit(1, "a"), commit(2, "b"), commit(3, "a")])
        assert counts["a"] == 2


class TestCheckRequest:
    def test_promised_answers(self) -> None:
        assert check_request(request(200), []) is None
        assert check_request(request(503), []) is None  # a dependency down
        assert check_request(request(429, retry_after="10"), []) is None

    def test_broken_promises(self) -> None:
        assert check_request(request(429), []) == "429 without Retry-After"
        assert check_request(request(500), []) == "answered 500"
        assert "timeout" in (check_request(request(None, "ReadTimeout"), []) or "")
        # a dropped connection while the generator ran
        assert check_request(request(None, "ConnectError"), []) is not None

    def test_a_dropped_connection_while_the_generator_was_killed_is_expected(self) -> None:
        assert check_request(request(None, "RemoteProtocolError"), [(9.0, 12.0)]) is None


def test_every_kind_comes_once_before_any_twice() -> None:
    assert set(itertools.islice(plan(3), len(KINDS))) == set(KINDS)


def test_accounting_names_lost_and_twice_trained_samples() -> None:
    records = [request(200, queued=["a", "b", "c", "d"])]
    commits = [commit(1, "a"), commit(2, "b"), commit(3, "a")]
    result = account(records, commits, {"b": "stale"}, {"c": "bad json"}, set(), [], [], [])
    assert result.trained == 1 and result.skipped == {"stale": 1}
    assert result.dead_lettered == {"bad json": 1}
    assert result.trained_twice == ["a"] and result.lost == ["d"]
    assert len(result.problems) == 2


def test_served_version_going_back_is_a_problem() -> None:
    fault = Fault("corrupt_swap", 0.0)
    result = account([], [], {}, {}, set(), [fault], [(1.0, 3), (2.0, 2)], [])
    assert result.problems == ["served version went back from 3 to 2 at 2"]


def test_slope_follows_the_longest_process_after_its_warm_up() -> None:
    steady = [(float(t), 100.0) for t in range(0, 300, 3)]
    # a restart: a short second process, growing while it warms up
    restarted = [(float(t), 50.0 + t) for t in range(300, 330, 3)]
    slope = slope_of("engine", {1: steady, 2: restarted}, warmup_s=30)
    assert slope is not None and slope.segments == 2
    assert abs(slope.growth_pct) < 1e-9 and slope.span_s > 200
