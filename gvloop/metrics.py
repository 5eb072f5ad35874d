"""The numbers the field reports for a model on a held-out set, as pure functions: pass@k from
n sampled answers per problem (the unbiased estimator), the share of distinct final answers,
and means over problems with their standard errors. `gvloop eval` and every point of a run's
curve compute them here (docs/make-run.md, "What the curve measures")."""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel


class Metric(BaseModel):
    value: float
    stderr: float

    @classmethod
    def mean_of(cls, values: Sequence[float]) -> Metric:
        """The mean with its standard error (sample standard deviation / sqrt(count))."""
        mean = sum(values) / len(values)
        if len(values) < 2:
            return cls(value=mean, stderr=0.0)
        variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
        return cls(value=mean, stderr=math.sqrt(variance / len(values)))


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimator of P(at least one of k samples is right) from c right of n
    (Chen et al., 2021): 1 - C(n-c, k) / C(n, k).

    Computed as 1 - prod_{i=n-c+1..n} (1 - k / i), the same ratio with no binomial
    coefficient to overflow a float (C(200, 100) is about 1e59)."""
    assert 0 <= c <= n and 1 <= k <= n, (n, c, k)
    if n - c < k:
        return 1.0  # every k-subset holds a right sample
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def distinct_fraction(answers: Sequence[str | None]) -> float:
    """The fraction of distinct final answers among one problem's samples: 1 when every
    sample answers differently, 1/n when all agree (no answer found counts as one answer)."""
    return len(set(answers)) / len(answers)
