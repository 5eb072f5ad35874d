"""The p50 / p95 / max summary of a latency, against numpy's percentiles."""

from __future__ import annotations

import numpy as np
import pytest

from services.spread import Spread

# the pauses of 21 swaps in one make run, as the swap issue reported them
PAUSES = [0.27, 0.29, 0.29, 0.30, 0.30, 0.30, 0.31, 0.32, 0.32, 0.33, 0.35, 0.36, 0.36, 0.36,
          0.38, 0.39, 0.39, 2.82, 3.13, 3.46, 3.93]  # fmt: skip


@pytest.mark.parametrize("values", [PAUSES, [0.1, 0.2], [3.0, 1.0, 2.0]])
def test_percentiles_are_numpys(values: list[float]) -> None:
    spread = Spread.of(values)
    assert spread is not None and spread.count == len(values)
    assert spread.p50 == pytest.approx(np.percentile(values, 50))
    assert spread.p95 == pytest.approx(np.percentile(values, 95))
    assert spread.max == max(values)


def test_one_value_and_none() -> None:
    assert Spread.of([0.2]) == Spread(count=1, p50=0.2, p95=0.2, max=0.2)
    assert Spread.of([]) is None


def test_it_reads_as_one_phrase() -> None:
    assert str(Spread.of(PAUSES)) == "p50 0.35s, p95 3.46s, max 3.93s over 21"
