"""Statistics of repeated benchmark runs: medians with distribution-free intervals and
geometric means, in plain Python (no scipy).

A run is repeated N times; each repetition gives one time per implementation, and a
ratio per case (the faster peer's time over maxsim-forge's, > 1 where maxsim-forge is
faster). The interval of a median is the order-statistic interval: the pair of sorted
values (x_(k), x_(n+1-k)) with the largest k whose coverage, under nothing but
independent repetitions, is at least the level asked for; where no pair reaches it (n
below 6 for 95%), the whole range, with the coverage it does have.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Interval:
    """A median and its interval; ``coverage`` is the interval's actual coverage."""

    median: float
    low: float
    high: float
    coverage: float
    n: int

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def median(values: Sequence[float]) -> float:
    xs = sorted(values)
    if not xs:
        raise ValueError("median of no values")
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def _coverage(n: int, k: int) -> float:
    """P(x_(k) <= median <= x_(n+1-k)) for n independent draws: 1 - 2 P(Binomial(n, 1/2) < k)."""
    tail = sum(math.comb(n, i) for i in range(k)) / 2**n
    return 1.0 - 2.0 * tail


def median_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """The median of ``values`` and its order-statistic interval at ``level``."""
    if not 0 < level < 1:
        raise ValueError(f"level is {level!r}; accepted: a probability strictly between 0 and 1")
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        raise ValueError("an interval needs at least one value")
    k = 1
    while k + 1 <= (n + 1) // 2 and _coverage(n, k + 1) >= level:
        k += 1
    return Interval(median(xs), xs[k - 1], xs[n - k], _coverage(n, k) if n > 1 else 0.0, n)


def geometric_mean(values: Sequence[float]) -> float:
    xs = list(values)
    if not xs:
        raise ValueError("geometric mean of no values")
    if any(not x > 0 for x in xs):
        raise ValueError(f"a geometric mean needs positive values; got {[x for x in xs if not x > 0]}")
    return math.exp(sum(math.log(x) for x in xs) / len(xs))
