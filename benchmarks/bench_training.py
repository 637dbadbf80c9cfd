"""One contrastive training step's MaxSim forward + backward, maxsim-forge against the peers.

    python benchmarks/bench_training.py [--cases colbert,colpali] [--impl maxsim-forge ...]
                                        [--repeat 5] [--out training.json]
    TRITON_INTERPRET=1 python benchmarks/bench_training.py --device cpu --tiny   # smoke test

One process, one device. A step is: grads set to None, scores [nq, nd] = MaxSim of every
query against every doc, loss = cross_entropy(scores.float() / 0.05, labels) with query
i's positive the first doc of its group (labels = arange(nq) * (nd // nq)), backward into
the queries and the docs (L2-normalized random tokens, leaves). Every implementation's
loss and gradients are checked against float64 torch autograd of the same loss before it
is timed; one that fails is reported as wrong (timed only with ``--time-wrong``), one that
is missing or raises as skipped. PyLate's formula in bf16 does not meet it (its
similarities are rounded to bf16 before the max, so near-ties pick other winners than
float64 does): it is the baseline as PyLate runs it, timed anyway, its error shown.
Timing: 3 warm-up steps each (the peers autotune on their first calls), then ``--repeat``
rounds over the implementations in rotated order, each step timed by
``maxsim_forge.tuner.time_fn`` (``triton.testing.do_bench`` medians, L2 flushed before each
step) and by the wall clock over steps run back to back (``loop_ms``: what a training loop
sees); reported: the median of the rounds' medians and their range. Memory: the peak allocated during one step above what was allocated before it,
next to the budget "saved winner indices (int32) + gradients".
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import json
import logging
import os
import statistics
import sys
import time
from typing import Callable

os.environ.setdefault("MAXSIM_FORGE_COMPILE", "blocking")  # timed calls run kernels, not the torch stand-in
os.environ.setdefault("LIK_SUPPRESS_NORM_WARN", "1")

import torch
import torch.nn.functional as F

from maxsim_forge.tuner import time_fn

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
TEMPERATURE = 0.05
CASES = {  # name: (nq, lq, nd, ld, dim, dtype)
    "colbert": (32, 32, 256, 180, 128, torch.bfloat16),
    "colpali": (32, 32, 256, 1030, 128, torch.bfloat16),
}
TINY = {"colbert": (4, 8, 16, 20, 32, torch.bfloat16), "colpali": (4, 8, 16, 40, 32, torch.bfloat16)}
GRAD_TOL = {torch.bfloat16: 2e-2, torch.float16: 5e-3, torch.float32: 1e-4}
LOSS_TOL = 1e-2


def pylate_scores(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """PyLate's ``pylate.scores.colbert_scores`` formula (no masks), reproduced: [nq, nd]."""
    return torch.einsum("ash,bth->abst", q, d).max(dim=-1).values.sum(dim=-1)


def _loader(module: str, name: str, **kwargs: object) -> Callable[[], ScoreFn]:
    """A lazy import of ``module.name``, called as ``name(q, d, **kwargs)``."""
    def load() -> ScoreFn:
        fn = getattr(importlib.import_module(module), name)
        return lambda q, d: fn(q, d, **kwargs)
    return load


IMPLS: dict[str, Callable[[], ScoreFn]] = {
    "maxsim-forge": _loader("maxsim_forge", "maxsim"),
    "flash-maxsim": _loader("flash_maxsim", "flash_maxsim_batched_train", shared_docs=True),
    "late-interaction-kernels": _loader("late_interaction_kernels", "maxsim"),
    "pylate-torch": lambda: pylate_scores,
}


def make_inputs(shape: tuple, device: torch.device, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, docs (normalized leaves requiring grad) and labels for one case."""
    nq, lq, nd, ld, dim, dtype = shape
    if nd < nq:
        raise ValueError(f"nd ({nd}) must be at least nq ({nq}): each query needs its own positive doc")
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(nq, lq, dim, generator=g), dim=-1).to(device, dtype).requires_grad_()
    d = F.normalize(torch.randn(nd, ld, dim, generator=g), dim=-1).to(device, dtype).requires_grad_()
    return q, d, torch.arange(nq, device=device) * (nd // nq)


def make_step(fn: ScoreFn, q: torch.Tensor, d: torch.Tensor, labels: torch.Tensor) -> Callable[[], torch.Tensor]:
    """One training step's scoring: grads to None, forward, loss, backward; returns the loss."""
    def step() -> torch.Tensor:
        q.grad = d.grad = None
        loss = F.cross_entropy(fn(q, d).float() / TEMPERATURE, labels)
        loss.backward()
        return loss.detach()
    return step


def reference(q: torch.Tensor, d: torch.Tensor, labels: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
    """The loss and its gradients (dq, dd) by float64 torch autograd on the same inputs."""
    q64, d64 = (t.detach().double().requires_grad_() for t in (q, d))
    loss = F.cross_entropy(pylate_scores(q64, d64) / TEMPERATURE, labels)
    loss.backward()
    return loss.item(), q64.grad, d64.grad


class _Fallbacks(logging.Handler):
    """maxsim-forge's warnings (a kernel that fell back to torch) seen while checking."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(record.getMessage()[:200])


FALLBACKS = _Fallbacks()
logging.getLogger("maxsim_forge").addHandler(FALLBACKS)


def check(step: Callable[[], torch.Tensor], q: torch.Tensor, d: torch.Tensor,
          ref: tuple[float, torch.Tensor, torch.Tensor]) -> dict:
    """Errors of one step against the reference: gradients relative to their largest entry."""
    loss = step().item()
    if q.grad is None or d.grad is None:
        raise RuntimeError("the step left no gradient on the queries or the docs")
    pairs = {"dq": (q.grad, ref[1]), "dd": (d.grad, ref[2])}
    return {**{n: float((g.double() - r).abs().max() / r.abs().max()) for n, (g, r) in pairs.items()},
            "loss": abs(loss - ref[0]) / abs(ref[0])}


def extra_memory(step: Callable[[], torch.Tensor], q: torch.Tensor, d: torch.Tensor) -> int | None:
    """Peak bytes allocated during one step above what was allocated before it (CUDA only)."""
    if q.device.type != "cuda":
        return None
    q.grad = d.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def run_case(name: str, shape: tuple, impls: list[str], device: torch.device, repeat: int, seed: int,
             time_wrong: bool = False) -> list[dict]:
    """Check, warm up, measure memory and time every implementation on one case."""
    nq, lq, nd, ld, dim, dtype = shape
    q, d, labels = make_inputs(shape, device, seed)
    budget = nq * lq * nd * 4 + (q.numel() + d.numel()) * q.element_size()
    ref = reference(q, d, labels)
    tol = GRAD_TOL[dtype]
    rows = {i: {"case": name, "impl": i, "shape": dict(nq=nq, lq=lq, nd=nd, ld=ld, dim=dim, dtype=str(dtype)),
                "budget_bytes": budget, "status": "ok"} for i in impls}
    steps = {}
    for impl in impls:
        row = rows[impl]
        try:
            step = make_step(IMPLS[impl](), q, d, labels)
            FALLBACKS.seen.clear()
            row["errors"] = errs = check(step, q, d, ref)
            if FALLBACKS.seen:
                row["warnings"] = list(FALLBACKS.seen)
            if max(errs["dq"], errs["dd"]) > tol or not errs["loss"] <= LOSS_TOL:
                row.update(status="wrong", reason=f"over the tolerances (gradients {tol:g}, loss {LOSS_TOL:g})")
            if row["status"] == "ok" or time_wrong or impl == "pylate-torch":
                for _ in range(3):
                    step()
                row["extra_bytes"] = extra_memory(step, q, d)
                steps[impl] = step
        except Exception as exc:  # noqa: BLE001 - a peer missing or unable to run this case is reported
            row.update(status="skipped", reason=f"{type(exc).__name__}: {exc}"[:300])
        finally:
            q.grad = d.grad = None
        print(f"  {name} {impl}: {row['status']} {row.get('errors', '')} {row.get('reason', '')} "
              f"{row.get('warnings', '')}", file=sys.stderr)
    del ref
    times: dict[str, list[float]] = {i: [] for i in steps}
    loops: dict[str, list[float]] = {i: [] for i in steps}
    for r in range(repeat):
        k = r % max(len(steps), 1)
        for impl in list(steps)[k:] + list(steps)[:k]:
            if impl not in steps:
                continue
            try:
                times[impl].append(time_fn(steps[impl], device=device.type, rep_ms=200).median_ms)
                loops[impl].append(loop_ms(steps[impl], device))
            except Exception as exc:  # noqa: BLE001 - a failure while timing drops that impl
                rows[impl].update(status="skipped", reason=f"timing: {type(exc).__name__}: {exc}"[:300])
                del steps[impl]
    for impl, ts in times.items():
        if impl in steps and ts:
            ls = loops[impl]
            rows[impl].update(ms_median=statistics.median(ts), ms_min=min(ts), ms_max=max(ts), ms_rounds=ts,
                              loop_ms_median=statistics.median(ls), loop_ms_rounds=ls)
    ours = rows.get("maxsim-forge", {})
    for row in rows.values():
        if "ms_median" in ours and "ms_median" in row:
            row["forge_speedup"] = row["ms_median"] / ours["ms_median"]
            row["forge_loop_speedup"] = row["loop_ms_median"] / ours["loop_ms_median"]
    return list(rows.values())


def loop_ms(step: Callable[[], torch.Tensor], device: torch.device, ms: float = 200.0) -> float:
    """Wall time per step of steps run back to back for about ``ms`` (synchronized at both
    ends): what a training loop sees, host time included, where ``do_bench`` flushes L2 and
    brackets each step with events."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    sync()
    t0 = time.perf_counter()
    step()
    sync()
    once = max(time.perf_counter() - t0, 1e-6)
    n = max(3, min(2000, int(ms / 1e3 / once)))
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    sync()
    return (time.perf_counter() - t0) / n * 1e3


def table(rows: list[dict]) -> str:
    """The rows as a markdown table; the check column gives the larger gradient error."""
    def mib(b: int | None) -> str:
        return "-" if b is None else f"{b / 2**20:.1f}"

    out = ["| case | impl | check (grad err) | median ms | [min, max] | maxsim-forge speed-up | loop ms "
           "| speed-up in the loop | extra MiB | budget MiB | extra/budget |",
           "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        err = r.get("errors")
        check_ = (f"{r['status']}: {r.get('reason', '')}" if r["status"] == "skipped" or not err
                  else f"{r['status']} ({max(err['dq'], err['dd']):.1e})")
        if "ms_median" not in r:
            out.append(f"| {r['case']} | {r['impl']} | {check_} | - | - | - | - | - | - | {mib(r['budget_bytes'])} | - |")
            continue
        extra = r.get("extra_bytes")
        ratio = "-" if extra is None else f"{extra / r['budget_bytes']:.2f}"
        speedup = f"{r['forge_speedup']:.2f}x" if "forge_speedup" in r else "-"
        loop_speedup = f"{r['forge_loop_speedup']:.2f}x" if "forge_loop_speedup" in r else "-"
        out.append(f"| {r['case']} | {r['impl']} | {check_} | {r['ms_median']:.3f} | [{r['ms_min']:.3f}, "
                   f"{r['ms_max']:.3f}] | {speedup} | {r['loop_ms_median']:.3f} | {loop_speedup} | {mib(extra)} "
                   f"| {mib(r['budget_bytes'])} | {ratio} |")
    return "\n".join(out)


def environment(device: torch.device) -> dict:
    """Device, library versions, date and command line."""
    import triton

    versions: dict[str, str | None] = {}
    for dist in ("maxsim-forge", "flash-maxsim", "late-interaction-kernels"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None  # not installed: its rows say skipped
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "triton": triton.__version__, "packages": versions,
            "triton_interpret": os.environ.get("TRITON_INTERPRET"), "date": datetime.datetime.now().isoformat(),
            "command": [sys.executable, *sys.argv]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma list of {', '.join(CASES)}")
    ap.add_argument("--impl", action="append", choices=list(IMPLS), help="repeatable; default: all")
    ap.add_argument("--tiny", action="store_true", help="small shapes, for a CPU smoke test through the interpreter")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeat", type=int, default=5, help="interleaved timing rounds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-wrong", action="store_true", help="time implementations that fail the check too")
    ap.add_argument("--out", default=None, help="JSON file for the rows and the environment")
    args = ap.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    if unknown := [c for c in cases if c not in CASES]:
        raise SystemExit(f"unknown case(s) {unknown}; known: {list(CASES)}")
    if args.repeat < 1:
        raise SystemExit("--repeat must be at least 1")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no CUDA device (try --device cpu --tiny, TRITON_INTERPRET=1)")
    impls = list(dict.fromkeys(args.impl or IMPLS))
    rows = []
    for name in cases:
        rows += run_case(name, (TINY if args.tiny else CASES)[name], impls, device, args.repeat, args.seed,
                         args.time_wrong)
    print(table(rows))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"env": environment(device), "tiny": args.tiny, "repeat": args.repeat, "rows": rows}, fh,
                      indent=1)


if __name__ == "__main__":
    main()
