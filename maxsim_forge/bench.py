"""``maxsim-forge bench``: maxsim-forge side by side with the peers, in one process.

Implementations: torch eager (fp16 einsum, max, sum), vLLM's vanilla algorithm
(re-implemented), flash-maxsim and late-interaction-kernels (optional extra ``bench``),
and maxsim-forge through its public API. Per case and implementation: median time
with its 20-80% spread, % of the floor, extra device memory, relative error against
float64, and optionally the first-call time in a fresh process with empty caches.

Without CUDA the same pipeline runs on shrunk cases through Triton's interpreter:
it tests the plumbing; its timings mean nothing and are marked so.
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
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from .codegen import torch_dtype
from .reference import maxsim_pairs_reference, maxsim_reference, valid_tokens
from .tuner import time_fn


@dataclass(frozen=True, kw_only=True)
class Case:
    name: str
    layout: str  # padded | allpairs | packed | pairs
    nq: int = 1
    lq: int
    nb: int
    ld: int
    dim: int = 128
    dtype: str = "fp16"
    ragged: bool = False  # doc lengths below the padded length
    skew: bool = False  # packed: many short docs, few long ones

    def tiny(self) -> Case:
        return replace(self, nq=min(self.nq, 3), lq=min(self.lq, 8), nb=min(self.nb, 4), ld=min(self.ld, 24),
                       dim=min(self.dim, 32))


CASES = [
    Case(name="colbert-1k-fp16", layout="padded", lq=32, nb=1000, ld=300),
    Case(name="colbert-10k-fp16", layout="padded", lq=32, nb=10000, ld=300),
    Case(name="colbert-1k-bf16", layout="padded", lq=32, nb=1000, ld=300, dtype="bf16"),
    Case(name="colbert-10k-bf16", layout="padded", lq=32, nb=10000, ld=300, dtype="bf16"),
    Case(name="colpali-1k", layout="padded", lq=32, nb=1000, ld=1030),
    Case(name="image-query-1k", layout="padded", lq=1024, nb=1000, ld=1024),
    Case(name="ragged-4k", layout="padded", lq=32, nb=4000, ld=512, ragged=True),
    Case(name="16-queries-x-1k", layout="allpairs", nq=16, lq=32, nb=1000, ld=300),
    Case(name="pairs-64", layout="pairs", lq=32, nb=64, ld=300),
    Case(name="pairs-1k", layout="pairs", lq=32, nb=1000, ld=300),
    Case(name="packed-50k-skewed", layout="packed", lq=32, nb=50000, ld=512, skew=True),
    Case(name="colbert-10k-dim96", layout="padded", lq=32, nb=10000, ld=300, dim=96),
]


@dataclass
class Inputs:
    case: Case
    q: torch.Tensor  # [Lq, dim] or [Nq, Lq, dim]
    d: torch.Tensor | None = None  # padded docs
    d_lengths: torch.Tensor | None = None
    d_packed: torch.Tensor | None = None
    cu: torch.Tensor | None = None
    queries: list | None = None  # pairs
    docs: list | None = None

    def nbytes(self) -> int:
        if self.docs is not None:
            return sum(t.numel() * t.element_size() for t in self.docs)
        d = self.d_packed if self.d_packed is not None else self.d
        return d.numel() * d.element_size()

    def flops(self) -> float:
        c = self.case
        if self.docs is not None:
            return float(sum(2 * q.shape[0] * d.shape[0] * c.dim for q, d in zip(self.queries, self.docs)))
        tokens = self.d_packed.shape[0] if self.d_packed is not None else c.nb * c.ld
        return 2.0 * c.nq * c.lq * tokens * c.dim


def make_inputs(case: Case, device: str, seed: int = 0) -> Inputs:
    g = torch.Generator().manual_seed(seed)
    dt = torch_dtype(case.dtype)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dt)

    if case.layout == "pairs":
        q_lens = torch.randint(max(1, case.lq // 2), case.lq + 1, (case.nb,), generator=g).tolist()
        d_lens = torch.randint(max(1, case.ld // 4), case.ld + 1, (case.nb,), generator=g).tolist()
        return Inputs(case, q=rand(1, case.dim), queries=[rand(n, case.dim) for n in q_lens],
                      docs=[rand(n, case.dim) for n in d_lens])
    q = rand(case.nq, case.lq, case.dim) if case.nq > 1 else rand(case.lq, case.dim)
    if case.layout == "packed":
        u = torch.rand(case.nb, generator=g)
        lens = (1 + (case.ld - 1) * (u.pow(3) if case.skew else u)).long()
        cu = torch.zeros(case.nb + 1, dtype=torch.int32)
        cu[1:] = lens.cumsum(0)
        return Inputs(case, q=q, d_packed=rand(int(cu[-1]), case.dim), cu=cu.to(device))
    lengths = None
    if case.ragged:
        lengths = torch.randint(1, case.ld + 1, (case.nb,), generator=g).to(device)
    return Inputs(case, q=q, d=rand(case.nb, case.ld, case.dim), d_lengths=lengths)


# ---- implementations: each returns a zero-argument callable, or None where it does not apply
def _doc_mask(x: Inputs) -> torch.Tensor | None:
    if x.d_lengths is None:
        return None
    return valid_tokens(x.d.shape[0], x.d.shape[1], x.d_lengths, None, x.d.device)


def _eager(x: Inputs):
    if x.d is None:
        return None
    mask = _doc_mask(x)

    def run():
        s = torch.einsum("...qk,btk->...bqt", x.q, x.d)
        if mask is not None:
            s = s.masked_fill(~mask[:, None, :], float("-inf"))
        return s.amax(-1).float().sum(-1)

    return run


def _vanilla(x: Inputs):
    from .integrations import vanilla_maxsim_batched

    if x.queries is not None:
        return lambda: vanilla_maxsim_batched(x.queries, x.docs)
    if x.d is None or x.q.dim() != 2:
        return None
    lengths = x.d_lengths.tolist() if x.d_lengths is not None else [x.d.shape[1]] * x.d.shape[0]
    docs = [x.d[i, :n] for i, n in enumerate(lengths)]
    queries = [x.q] * len(docs)
    return lambda: vanilla_maxsim_batched(queries, docs)


def _flash(x: Inputs):
    import flash_maxsim as fm

    if x.queries is not None:
        return lambda: fm.flash_maxsim_pairs(x.queries, x.docs)
    if x.d_packed is not None:
        return None if x.q.dim() != 2 else (lambda: fm.flash_maxsim_packed(x.q, x.d_packed, x.cu))
    if x.q.dim() == 3:
        return lambda: fm.flash_maxsim_batched(x.q, x.d, x.d_lengths)
    return lambda: fm.flash_maxsim(x.q, x.d, x.d_lengths)


def _lik(x: Inputs):
    os.environ.setdefault("LIK_SUPPRESS_NORM_WARN", "1")
    import late_interaction_kernels as lik

    if x.queries is not None:
        return None
    if x.d_packed is not None:
        if x.q.dim() != 2:
            return None
        cu_q = torch.tensor([0, x.q.shape[0]], dtype=torch.int32, device=x.q.device)
        return lambda: lik.maxsim_varlen(x.q, x.d_packed, cu_q, x.cu)
    mask = _doc_mask(x)
    return lambda: lik.maxsim(x.q, x.d, d_mask=mask)


def _forge(x: Inputs):
    import maxsim_forge as mf

    if x.queries is not None:
        return lambda: mf.maxsim_pairs(x.queries, x.docs)
    if x.d_packed is not None:
        # Like the peers, no read-back of cu_seqlens values on the timed path.
        return lambda: mf.maxsim_packed(x.q, x.d_packed, x.cu, validate=False)
    return lambda: mf.maxsim(x.q, x.d, d_lengths=x.d_lengths, validate=False)


IMPLS: dict[str, Callable] = {
    "torch-eager": _eager,
    "vllm-vanilla": _vanilla,
    "flash-maxsim": _flash,
    "late-interaction-kernels": _lik,
    "maxsim-forge": _forge,
}
GPU_ONLY = {"flash-maxsim", "late-interaction-kernels"}


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
