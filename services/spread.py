"""A distribution in the three numbers people read of a latency: the median, the 95th
percentile and the worst, with how many values they summarise."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from pydantic import BaseModel


class Spread(BaseModel):
    count: int
    p50: float
    p95: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread | None:
        """None for no values. Percentiles interpolate between the values (numpy's default),
        so a p95 over a dozen swaps lies between the two worst."""
        if not values:
            return None
        if len(values) == 1:
            return cls(count=1, p50=values[0], p95=values[0], max=values[0])
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        return cls(count=len(values), p50=cuts[49], p95=cuts[94], max=max(values))

    def __str__(self) -> str:
        """`p50 0.12s, p95 0.20s, max 0.31s over 15`"""
        return f"p50 {self.p50:.2f}s, p95 {self.p95:.2f}s, max {self.max:.2f}s over {self.count}"
