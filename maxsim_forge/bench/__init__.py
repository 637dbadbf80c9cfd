"""``maxsim-forge bench``: maxsim-forge side by side with the peers, under a protocol a
skeptic can accept.

- Every (implementation, case) pair runs in a process of its own with empty caches, so
  each peer's autotune picks for the case it is timed on; its first call (compile and
  autotune) is reported beside the warm time.
- Every implementation's whole output is checked against the float64 reference before it
  is timed; one that fails is reported as failed, never with a time.
- Floors count the work actually needed (valid tokens): max(bytes / copy bandwidth,
  flops / fp16 matmul peak), both measured on the same GPU in the same run.
- The whole run is repeated (default 5 times), implementations interleaved in a rotated
  order; each case reports the median of its per-repetition ratios (the faster peer's
  time over maxsim-forge's) with an order-statistic interval, and the run the geometric
  mean of those medians.
- ``--heldout N`` adds N seeded shapes that no preset tuned, reported apart.

Without CUDA the same pipeline runs on shrunk cases through Triton's interpreter: it
tests the plumbing, says what it cannot do, and its timings mean nothing.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import time
from collections.abc import Callable

import torch

from ._cases import CASES, GPU_ONLY, IMPLS, Case, Inputs, as_tensor, make_inputs, reference_of, resolve_impl
from ._heldout import draw as heldout_cases
from ._protocol import FORGE, PEERS, CaseResult, geomean_of_medians, run_case, summarise
from ._report import format_report, release_folder, write
from ._stats import Interval, geometric_mean, median_interval


def measure_floors(device: str) -> tuple[float, float]:
    """(copy bandwidth in B/s counting read + write, fp16 matmul FLOP/s) on this device;
    NaN without CUDA."""
    if not device.startswith("cuda"):
        return float("nan"), float("nan")
    from triton.testing import do_bench

    x = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    bw = 2 * x.numel() / (do_bench(lambda: y.copy_(x), return_mode="median") * 1e-3)
    a = torch.randn(8192, 8192, device=device, dtype=torch.float16)
    peak = 2 * 8192**3 / (do_bench(lambda: a @ a, return_mode="median") * 1e-3)
    return bw, peak


def limitations(impls: list[str], device: str) -> list[str]:
    """What this run cannot do, and why: said before it starts."""
    notes = []
    if not device.startswith("cuda"):
        notes.append("no CUDA device: cases are shrunk and run through Triton's interpreter; "
                     "the timings test the plumbing and mean nothing, and there are no floors")
        skipped = [i for i in impls if i in GPU_ONLY]
        if skipped:
            notes.append(f"{', '.join(skipped)} need a GPU: skipped, so no case has a ratio to a peer")
    for impl, module in (("flash-maxsim", "flash_maxsim"), ("late-interaction-kernels", "late_interaction_kernels")):
        if impl in impls and device.startswith("cuda") and importlib.util.find_spec(module) is None:
            notes.append(f"{impl} is not installed (pip install -e '.[bench]'): it is left out")
    if importlib.util.find_spec("matplotlib") is None:
        notes.append("matplotlib is not installed (pip install -e '.[bench]'): no chart")
    return notes


def run(cases: list[Case], impls: list[str], *, device: str, repeats: int = 5, seed: int = 0,
        log: Callable[[str], None] = print,
        done: Callable[[list[CaseResult], dict], None] | None = None) -> tuple[list[CaseResult], dict]:
    """Every case under the protocol above; returns the per-case results and the run's
    metadata (GPU, versions, date, floors' peaks, repetitions). ``done(results, meta)`` is
    called after each case with the results so far (the CLI writes them: a run cut short
    keeps the cases it finished)."""
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ValueError(f"repeats is {repeats!r}; accepted: a whole number >= 1")
    on_gpu = device.startswith("cuda")
    impls = [i for i in impls if on_gpu or i not in GPU_ONLY]
    bw, peak = measure_floors(device)
    if on_gpu:
        torch.cuda.empty_cache()  # the floors' buffers go back to the device, for the workers
    import triton

    meta = {"gpu": torch.cuda.get_device_name() if on_gpu else "Triton interpreter (CPU): timings mean nothing",
            "torch": torch.__version__, "triton": triton.__version__, "date": time.strftime("%Y-%m-%d"),
            "copy_bw": bw, "matmul_peak": peak, "repeats": repeats, "seed": seed}
    results = []
    for case in cases:
        case = case if on_gpu else case.tiny()
        # On the host: only the valid token counts matter here, and device memory held by
        # this process would be missing from the workers' (the same seed, the same lengths).
        x = make_inputs(case, "cpu", seed=seed)
        floor_ms = max(x.nbytes() / bw, x.flops() / peak) * 1e3 if on_gpu else None
        del x
        workers = run_case(dataclasses.asdict(case), impls, device=device, repeats=repeats, seed=seed, log=log)
        results.append(summarise(dataclasses.asdict(case), workers, floor_ms))
        if done is not None:
            done(results, meta)
    return results, meta


__all__ = [
    "CASES", "FORGE", "GPU_ONLY", "IMPLS", "PEERS", "Case", "CaseResult", "Inputs", "Interval", "as_tensor",
    "format_report", "geomean_of_medians", "geometric_mean", "heldout_cases", "limitations", "make_inputs",
    "measure_floors", "median_interval", "reference_of", "release_folder", "resolve_impl", "run", "select", "write",
]


def select(names: str, heldout: int = 0, seed: int = 0) -> tuple[list[Case], list[Case]]:
    """The cases named (comma-separated, or "all") and ``heldout`` held-out cases;
    ValueError naming what is unknown."""
    by_name = {c.name: c for c in CASES}
    wanted = list(by_name) if names == "all" else [n for n in names.split(",") if n]
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise ValueError(f"unknown case(s) {unknown}; accepted: {', '.join(by_name)}, or all")
    if not isinstance(heldout, int) or isinstance(heldout, bool) or heldout < 0:
        raise ValueError(f"heldout is {heldout!r}; accepted: a whole number >= 0")
    from ..tuner import resolve as preset_buckets

    return [by_name[n] for n in wanted], heldout_cases(heldout, seed=seed, presets=preset_buckets("default", None))
