"""Where a training step's MaxSim time goes, on a CUDA GPU: each piece of maxsim-forge's
forward and backward timed alone (``maxsim_forge.tuner.time_fn`` medians, ms), then a
``torch.profiler`` table of whole steps (GPU time per kernel, host time per step).

    python benchmarks/profile_backward.py [--cases colbert,colpali]

The cases are bench_training.py's (a contrastive step: 32 queries x 32 tokens against
256 docs, bf16, dim 128).
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("MAXSIM_FORGE_COMPILE", "blocking")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from bench_training import CASES, make_inputs, make_step  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--host", action="store_true",
                    help="only the host side: each implementation's step under cProfile (top functions by own time)")
    args = ap.parse_args()
    if args.host:
        host_profiles(args.cases.split(","))
        return
    import maxsim_forge as mf
    from maxsim_forge._inputs import prepare_padded
    from maxsim_forge.runtime._grad import grads_from_winners, winners
    from maxsim_forge.tuner import time_fn

    for name in args.cases.split(","):
        q, d, labels = make_inputs(CASES[name], torch.device("cuda"), 0)
        step = make_step(mf.maxsim, q, d, labels)
        for _ in range(3):
            step()
        prep = prepare_padded(q.detach(), d.detach())
        idx = winners(prep)
        g = torch.randn(q.shape[0], d.shape[0], device="cuda")
        pieces = {
            "step (forward, loss, backward)": step,
            "forward alone (no grad)": lambda: mf.maxsim(q.detach(), d.detach()),
            "winners kernel": lambda: winners(prep),
            "dq from winners": lambda: grads_from_winners(prep, idx.clone(), g, True, False),
            "dd from winners (sort included)": lambda: grads_from_winners(prep, idx.clone(), g, False, True),
            "sort of the winners": lambda: torch.sort(idx, dim=1, stable=True),
            "idx.clone (subtract from the two above)": lambda: idx.clone(),
        }
        print(f"== {name}: {tuple(q.shape)} x {tuple(d.shape)} {q.dtype}")
        for what, fn in pieces.items():
            ms = time_fn(fn, device="cuda", rep_ms=200).median_ms
            print(f"  {what:42s} {ms:8.4f} ms")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                step()
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))


def host_profiles(cases: list[str], steps: int = 300) -> None:
    """Steps per second with the GPU kept busy (wall clock over ``steps`` steps, synced at the
    ends), then each implementation's Python functions by own time under cProfile."""
    import cProfile
    import pstats
    import time

    from bench_training import IMPLS

    for name in cases:
        q, d, labels = make_inputs(CASES[name], torch.device("cuda"), 0)
        for impl, load in IMPLS.items():
            if impl == "pylate-torch":
                continue
            try:
                step = make_step(load(), q, d, labels)
                for _ in range(5):
                    step()
            except Exception as exc:  # noqa: BLE001 - a peer that is missing
                print(f"== {name} {impl}: skipped ({type(exc).__name__}: {exc})"[:300])
                continue
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            torch.cuda.synchronize()
            wall = (time.perf_counter() - t0) / steps * 1e3
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(steps):
                step()
            torch.cuda.synchronize()
            prof.disable()
            print(f"== {name} {impl}: {wall:.4f} ms per step (wall clock, {steps} steps)")
            pstats.Stats(prof).sort_stats("tottime").print_stats(18)


if __name__ == "__main__":
    main()
