"""Schema-driven fuzzing of a live API: schemathesis generates valid (positive) and invalid
(negative) requests for every operation of its OpenAPI spec; we count the answers by status and
keep every server error (a 5xx other than a 503 with a detail) and every hang (no answer within
the timeout) as a failure to report."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode

# Anything the transport raises (a read timeout is a hang) is a failure too.
TRANSPORT_ERROR = 0


@dataclass
class FuzzReport:
    statuses: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    @property
    def inputs(self) -> int:
        return sum(self.statuses.values())

    def count(self, status: int) -> int:
        return sum(n for (_, _, code), n in self.statuses.items() if code == status)

    def by_status(self) -> dict[int, int]:
        totals: Counter[int] = Counter()
        for (_, _, code), n in self.statuses.items():
            totals[code] += n
        return dict(sorted(totals.items()))


def fuzz_api(
    base_url: str,
    headers: dict[str, str],
    max_examples: int,
    timeout_s: float,
    skip: frozenset[str] = frozenset(),
    prepare: Callable[[Case], None] | None = None,
) -> FuzzReport:
    """Fuzz every operation but those labelled in `skip` (e.g. "GET /metrics"); `prepare`
    may adjust each case before it is sent (to bound the work a valid request asks for)."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", timeout=timeout_s)
    report = FuzzReport()
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.label in skip:
            continue
        for mode in GenerationMode:
            try:
                _fuzz_operation(operation, mode, headers, max_examples, timeout_s, prepare, report)
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # nothing to break in a bare GET
    return report


def _fuzz_operation(
    operation: schemathesis.APIOperation,
    mode: GenerationMode,
    headers: dict[str, str],
    max_examples: int,
    timeout_s: float,
    prepare: Callable[[Case], None] | None,
    report: FuzzReport,
) -> None:
    # derandomize: the same inputs in every run, so CI failures reproduce.
    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Case) -> None:
        key = (operation.label, mode.value)
        if prepare is not None:
            prepare(case)
        try:
            response = case.call(headers=headers, timeout=timeout_s)
        except Exception as exc:
            report.statuses[(*key, TRANSPORT_ERROR)] += 1
            report.failures.append(f"{operation.label} ({mode}): {type(exc).__name__}: {exc}")
            return
        report.statuses[(*key, response.status_code)] += 1
        if response.status_code >= 500 and not (
            response.status_code == 503 and "detail" in response.text
        ):
            report.failures.append(
                f"{operation.label} ({mode}): {response.status_code} {response.text[:300]!r} "
                f"for {case.as_curl_command()[:500]}"
            )

    run()
