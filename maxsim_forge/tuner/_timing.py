"""Timing: CUDA events with the L2 flushed, median of many runs, warm-up first.

Without CUDA (the interpreter) a wall clock stands in: only the pipeline is tested
there, never the numbers.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float


def time_cuda(fn: Callable[[], object], *, warmup_ms: float = 25, rep_ms: float = 100) -> Timing:
    """``triton.testing.do_bench``: events around each run, L2 flushed between runs."""
    from triton.testing import do_bench

    p20, median, p80 = do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.2, 0.5, 0.8])
    return Timing(median, p20, p80)


def time_wall(fn: Callable[[], object], *, reps: int = 3) -> Timing:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return Timing(statistics.median(times), times[0], times[-1])


def time_fn(fn: Callable[[], object], *, device: str, warmup_ms: float = 25, rep_ms: float = 100) -> Timing:
    if device.startswith("cuda"):
        return time_cuda(fn, warmup_ms=warmup_ms, rep_ms=rep_ms)
    return time_wall(fn)
