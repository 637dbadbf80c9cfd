"""``maxsim-forge bench``: maxsim-forge side by side with the peers, in one process.

Implementations: torch eager (fp16 einsum, max, sum), vLLM's vanilla algorithm
(re-implemented), flash-maxsim and late-interaction-kernels (optional extra ``bench``),
and maxsim-forge through its public API. Per case and implementation: median time
with its 20-80% spread, % of the floor, extra device memory, relative error against
float64, and optionally the first-call time in a fresh process with empty caches.

Without CUDA the same pipeline runs on shrunk cases through Triton's interpreter:
it tests the plumbing; its timings mean nothing and are marked so.

The cases, their inputs and each implementation's call live in ``_bench_cases.py``
(read from here as ``bench.CASES``, ``bench.IMPLS``); this module times them and
writes the report.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ._bench_cases import CASES, GPU_ONLY, IMPLS, Case, Inputs, make_inputs
from .reference import maxsim_pairs_reference, maxsim_reference
from .tuner import time_fn

__all__ = [
    "CASES", "GPU_ONLY", "IMPLS", "PEERS", "Case", "Inputs", "Row", "Versus", "first_call_s", "format_versus",
    "make_inputs", "measure_floors", "per_call_ms", "release_folder", "run", "versus_peers", "write",
]


def _as_tensor(out) -> torch.Tensor:
    return torch.stack(list(out)) if isinstance(out, (list, tuple)) else out


def _reference(x: Inputs, limit: int = 64) -> tuple[torch.Tensor, slice]:
    """float64 scores of the first ``limit`` docs (or pairs) and the slice they cover."""
    if x.queries is not None:
        n = min(limit, len(x.queries))
        return maxsim_pairs_reference(x.queries[:n], x.docs[:n]), slice(0, n)
    if x.d_packed is not None:
        from .reference import maxsim_packed_reference

        n = min(limit, x.cu.numel() - 1)
        return maxsim_packed_reference(x.q, x.d_packed, x.cu[: n + 1]), slice(0, n)
    n = min(limit, x.d.shape[0])
    lengths = x.d_lengths[:n] if x.d_lengths is not None else None
    return maxsim_reference(x.q, x.d[:n], d_lengths=lengths), slice(0, n)


def measure_floors(device: str) -> tuple[float, float]:
    """(copy bandwidth B/s counting read + write, fp16 matmul FLOP/s) on this device."""
    if not device.startswith("cuda"):
        return float("nan"), float("nan")
    from triton.testing import do_bench

    x = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    bw = 2 * x.numel() / (do_bench(lambda: y.copy_(x), return_mode="median") * 1e-3)
    a = torch.randn(8192, 8192, device=device, dtype=torch.float16)
    peak = 2 * 8192**3 / (do_bench(lambda: a @ a, return_mode="median") * 1e-3)
    return bw, peak  # the 2 GiB of buffers go back to torch's cache with this frame


def per_call_ms(fn: Callable[[], object], median_ms: float, on_gpu: bool, budget_ms: float = 100.0) -> float:
    """Time per call of calls made back to back for about ``budget_ms``, then one sync.

    ``do_bench`` times each call between events after an L2 flush, which hides the host
    time spent while the flush runs; this counts it, as a serving loop sees it."""
    n = max(3, min(2000, int(budget_ms / max(median_ms, 1e-3))))
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    return (time.perf_counter() - t0) * 1e3 / n


_FIRST_CALL = r"""
import json, sys, time, torch
from maxsim_forge.bench import CASES, IMPLS, make_inputs
case = next(c for c in CASES if c.name == sys.argv[1])
x = make_inputs(case, "cuda")
fn = IMPLS[sys.argv[2]](x)
torch.cuda.synchronize()
t0 = time.perf_counter(); fn(); torch.cuda.synchronize()
print(json.dumps({"first_call_s": time.perf_counter() - t0}))
"""


def first_call_s(case: Case, impl: str) -> float | None:
    """One call in a fresh process with empty Triton and maxsim-forge kernel caches."""
    with tempfile.TemporaryDirectory() as triton_cache, tempfile.TemporaryDirectory() as kernels:
        env = dict(os.environ, TRITON_CACHE_DIR=triton_cache, MAXSIM_FORGE_CACHE=kernels)
        env.pop("MAXSIM_FORGE_COMPILE", None)  # the first call as users get it: the default mode
        res = subprocess.run([sys.executable, "-c", _FIRST_CALL, case.name, impl], env=env,
                             capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])["first_call_s"]


@dataclass
class Row:
    case: str
    impl: str
    ms: float
    p20_ms: float
    p80_ms: float
    floor_ms: float
    floor_pct: float
    extra_mb: float
    rel_err: float
    first_call_s: float | None = None
    # Calls made back to back, then one sync: time per call. The GPU's time where it
    # is the larger, else the host's (pairs from Python lists, small batches).
    per_call_ms: float | None = None


def run(cases: list[Case], impls: list[str], *, device: str, first_call: bool = False,
        log: Callable[[str], None] = print) -> tuple[list[Row], dict]:
    # Timed calls must run the kernels: the warm-up call waits for each compile rather
    # than letting torch score the calls while it runs in the background.
    saved = os.environ.get("MAXSIM_FORGE_COMPILE")
    os.environ["MAXSIM_FORGE_COMPILE"] = "blocking"
    try:
        return _run_cases(cases, impls, device=device, first_call=first_call, log=log)
    finally:
        if saved is None:
            os.environ.pop("MAXSIM_FORGE_COMPILE", None)
        else:
            os.environ["MAXSIM_FORGE_COMPILE"] = saved


def _run_cases(cases: list[Case], impls: list[str], *, device: str, first_call: bool,
               log: Callable[[str], None]) -> tuple[list[Row], dict]:
    on_gpu = device.startswith("cuda")
    bw, peak = measure_floors(device)
    rows: list[Row] = []
    for case in cases:
        case = case if on_gpu else case.tiny()
        x = make_inputs(case, device)
        ref, part = _reference(x)
        scale = float(ref.abs().max()) if ref.numel() else 1.0
        floor_ms = max(x.nbytes() / bw, x.flops() / peak) * 1e3 if on_gpu else float("nan")
        for impl in impls:
            if impl in GPU_ONLY and not on_gpu:
                continue
            try:
                fn = IMPLS[impl](x)
            except ImportError as exc:
                log(f"  {impl}: not installed ({exc})")
                continue
            if fn is None:
                continue
            out = _as_tensor(fn())  # warm-up: compiles, autotunes
            err = float((out[..., part].double() - ref).abs().max()) / max(scale, 1e-30) if ref.numel() else 0.0
            extra = float("nan")
            if on_gpu:
                torch.cuda.synchronize()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                fn()
                torch.cuda.synchronize()
                extra = (torch.cuda.max_memory_allocated() - base) / 2**20
            timing = time_fn(fn, device=device, rep_ms=200)
            med, p20, p80 = timing.median_ms, timing.p20_ms, timing.p80_ms
            per_call = per_call_ms(fn, med, on_gpu)
            first = first_call_s(case, impl) if first_call and on_gpu else None
            rows.append(Row(case.name, impl, med, p20, p80, floor_ms, 100 * floor_ms / med if on_gpu else float("nan"),
                            extra, err, first, per_call))
            log(f"{case.name:20s} {impl:26s} {med:10.4f} ms ({p20:.4f}-{p80:.4f})  "
                f"floor {rows[-1].floor_pct:5.1f}%  +{extra:.1f} MB  err {err:.1e}  per call {per_call:.4f} ms"
                + (f"  first call {first:.2f} s" if first is not None else ""))
    import triton

    meta = {"gpu": torch.cuda.get_device_name() if on_gpu else "Triton interpreter (CPU): timings mean nothing",
            "torch": torch.__version__, "triton": triton.__version__, "date": time.strftime("%Y-%m-%d"),
            "copy_bw": bw, "matmul_peak": peak}
    return rows, meta


PEERS = ("flash-maxsim", "late-interaction-kernels")


@dataclass
class Versus:
    """maxsim-forge against the faster peer on one case (ratio > 1: maxsim-forge is faster)."""

    case: str
    forge_ms: float
    peer: str
    peer_ms: float
    ratio: float
    floor_pct: float


def versus_peers(rows: list[Row]) -> tuple[list[Versus], float | None]:
    """Per case, maxsim-forge's speedup over the faster of the peers that ran it, and the
    geometric mean of those speedups (None when no case had both)."""
    out = []
    for case in dict.fromkeys(r.case for r in rows):
        mine = [r for r in rows if r.case == case and r.impl == "maxsim-forge"]
        peers = [r for r in rows if r.case == case and r.impl in PEERS]
        if not mine or not peers:
            continue
        best = min(peers, key=lambda r: r.ms)
        out.append(Versus(case, mine[0].ms, best.impl, best.ms, best.ms / mine[0].ms, mine[0].floor_pct))
    mean = math.exp(sum(math.log(v.ratio) for v in out) / len(out)) if out else None
    return out, mean


def format_versus(rows: list[Row]) -> list[str]:
    """The summary table as lines of text."""
    table, mean = versus_peers(rows)
    lines = [f"{'case':20s} {'maxsim-forge ms':>15s} {'faster peer':26s} {'peer ms':>9s} {'speedup':>8s} {'floor':>6s}"]
    lines += [f"{v.case:20s} {v.forge_ms:15.4f} {v.peer:26s} {v.peer_ms:9.4f} {v.ratio:7.2f}x {v.floor_pct:5.1f}%"
              for v in table]
    if mean is not None:
        lines.append(f"geometric mean speedup over the faster peer: {mean:.2f}x over {len(table)} cases")
    return lines


def release_folder(gpu: str | None = None, date: str | None = None, root: str | Path = "benchmarks/results") -> Path:
    """A release run's folder, ``<root>/<gpu>-<date>``: ``benchmarks/results/h100-2026-11-27``
    for an "NVIDIA H100 80GB HBM3" that day. ``gpu`` defaults to this CUDA device ("cpu"
    without one), shortened to its first word holding a digit; ``date`` to today."""
    date = time.strftime("%Y-%m-%d") if date is None else date
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
        raise ValueError(f"date is {date!r}; accepted: YYYY-MM-DD, e.g. 2026-11-27")
    gpu = (torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu") if gpu is None else gpu
    words = [w for w in re.split(r"[^0-9a-z]+", gpu.lower()) if w and w != "nvidia"] or ["gpu"]
    short = next((w for w in words if any(c.isdigit() for c in w)), "-".join(words))
    return Path(root) / f"{short}-{date}"


def write(rows: list[Row], meta: dict, out_dir: str | Path) -> list[Path]:
    """CSV and JSON of every row (with the GPU, versions and date), and a PNG chart when
    matplotlib is installed."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "bench.csv", out_dir / "bench.json"]
    with open(paths[0], "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*asdict(rows[0]), *meta] if rows else list(meta))
        writer.writeheader()
        for r in rows:
            writer.writerow({**asdict(r), **meta})
    table, mean = versus_peers(rows)
    paths[1].write_text(json.dumps({**meta, "rows": [asdict(r) for r in rows],
                                    "versus_peers": [asdict(v) for v in table], "geomean_speedup": mean}, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return paths
    cases = list(dict.fromkeys(r.case for r in rows))
    impls = list(dict.fromkeys(r.impl for r in rows))
    fig, ax = plt.subplots(figsize=(max(8, 1.2 * len(cases)), 5))
    width = 0.8 / max(1, len(impls))
    for i, impl in enumerate(impls):
        xs, ys = [], []
        for j, c in enumerate(cases):
            hit = [r.ms for r in rows if r.case == c and r.impl == impl]
            if hit:
                xs.append(j + i * width)
                ys.append(hit[0])
        ax.bar(xs, ys, width, label=impl)
    ax.set_yscale("log")
    ax.set_ylabel("median time, ms (log)")
    ax.set_xticks([j + width * (len(impls) - 1) / 2 for j in range(len(cases))])
    ax.set_xticklabels(cases, rotation=30, ha="right")
    ax.set_title(f"MaxSim, {meta['gpu']}, {meta['date']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / "bench.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths
