"""Serving-sized pair batches from Python lists, packing included, side by side:
vLLM's vanilla algorithm (re-implemented), flash-maxsim's list path, and maxsim-forge.

    python benchmarks/bench_vllm.py          # into benchmarks/results/<gpu>-<date>/vllm.json

Each timing is one call followed by a device synchronize, wall clock: what a serving
loop waits for. Median of many calls after warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def _pairs(n: int, dim: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    q_lens = torch.randint(16, 33, (n,), generator=g).tolist()
    d_lens = torch.randint(64, 301, (n,), generator=g).tolist()
    qs = [torch.randn(a, dim, generator=g).to("cuda", torch.float16) for a in q_lens]
    ds = [torch.randn(b, dim, generator=g).to("cuda", torch.float16) for b in d_lens]
    return qs, ds


def _time(fn, reps: int) -> dict:
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e6)
    times.sort()
    return {"median_us": statistics.median(times), "p10_us": times[len(times) // 10], "p90_us": times[9 * len(times) // 10]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None, help="JSON file (default: vllm.json in the release folder, "
                    "benchmarks/results/<gpu>-<date>/)")
    ap.add_argument("--dim", type=int, default=128)
    args = ap.parse_args()
    import triton

    from maxsim_forge.integrations import vanilla_maxsim_batched
    from maxsim_forge.integrations.vllm import compute_maxsim_score_batched

    import maxsim_forge as mf

    # Two contracts: vLLM's (a list of 0-d tensors, one per pair) and a plain [N] tensor.
    impls = {"vllm-vanilla (list)": vanilla_maxsim_batched,
             "maxsim-forge compute_maxsim_score_batched (list)": compute_maxsim_score_batched,
             "maxsim-forge maxsim_pairs (tensor)": mf.maxsim_pairs}
    try:
        import flash_maxsim

        impls["flash-maxsim flash_maxsim_pairs (tensor)"] = flash_maxsim.flash_maxsim_pairs
        impls["flash-maxsim, unbound to a list (list)"] = lambda q, d: list(flash_maxsim.flash_maxsim_pairs(q, d).unbind(0))
    except ImportError as exc:
        print("flash-maxsim unavailable:", exc)
    rows = []
    for n in (64, 1000):
        qs, ds = _pairs(n, args.dim, seed=n)
        ref = torch.stack(vanilla_maxsim_batched(qs, ds)).double()
        for name, fn in impls.items():
            out = fn(qs, ds)
            out = torch.stack(list(out)) if isinstance(out, (list, tuple)) else out
            err = float((out.double() - ref).abs().max() / ref.abs().max())
            t = _time(lambda: fn(qs, ds), reps=200 if n == 64 else 50)
            rows.append({"pairs": n, "impl": name, "rel_err": err, **t})
            print(f"{n:5d} pairs  {name:50s} {t['median_us']:9.1f} us  (p10 {t['p10_us']:.1f}, p90 {t['p90_us']:.1f})  "
                  f"rel err {err:.1e}", flush=True)
    doc = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "date": time.strftime("%Y-%m-%d"), "dim": args.dim, "rows": rows}
    from maxsim_forge.bench import release_folder

    out = Path(args.out) if args.out else release_folder() / "vllm.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as fh:
        json.dump(doc, fh, indent=1)


if __name__ == "__main__":
    main()
