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
    args = ap.parse_args()
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


if __name__ == "__main__":
    main()
