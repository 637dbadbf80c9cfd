"""Dispatcher host cost per call against a bare launch, and first-call times.

    python benchmarks/bench_runtime.py       # into benchmarks/results/<gpu>-<date>/runtime.json

Host cost: a tiny problem (the GPU finishes each launch before the host issues the
next), many calls in a row, wall time per call; launches direct and through
``kernel[grid]``; the stages of a 64-pair call from Python lists. First call: fresh
processes with empty Triton and kernel caches: the default (background compile), a
blocking compile, after ``warmup``, and a new process on the caches the
warmup filled.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

_FIRST_CALL = r"""
import json, os, sys, time
import torch
import maxsim_forge as mf
q = torch.randn(32, 128, device="cuda", dtype=torch.float16)
d = torch.randn(1000, 300, 128, device="cuda", dtype=torch.float16)
torch.cuda.synchronize()
bucket = {"layout": "padded", "dtype": "fp16", "dim": 128, "lq": 32, "ld": 300, "nb": 1000}
t_warm = None
if sys.argv[1] == "warmup":
    t0 = time.perf_counter(); mf.warmup([bucket]); t_warm = time.perf_counter() - t0
t0 = time.perf_counter(); mf.maxsim(q, d); torch.cuda.synchronize(); first = time.perf_counter() - t0
from maxsim_forge.runtime import _api
pending = [r.pending for r in _api._routes.values() if r.pending is not None]
for p in pending:
    p.result()
ready = time.perf_counter() - t0 if pending else None
t1 = time.perf_counter(); mf.maxsim(q, d); torch.cuda.synchronize(); second = time.perf_counter() - t1
print(json.dumps({"mode": sys.argv[1], "warmup_s": t_warm, "first_call_s": first, "kernel_ready_s": ready,
                  "second_call_s": second, "source": mf.explain(q, d).source}))
"""


def host_cost(calls: int = 3000) -> dict:
    import maxsim_forge as mf
    from maxsim_forge._inputs import prepare_padded
    from maxsim_forge.codegen import load_variant
    from maxsim_forge.runtime._api import _route

    q = torch.randn(32, 128, device="cuda", dtype=torch.float16)
    d = torch.randn(4, 64, 128, device="cuda", dtype=torch.float16)
    mf.maxsim(q, d)
    prep = prepare_padded(q, d)
    route = _route(prep)
    variant = load_variant(prep.spec, route.config)
    kwargs = prep.launch_kwargs
    out = torch.empty(1, 4, device="cuda")

    def per_call(fn) -> float:
        for _ in range(200):
            fn()
        torch.cuda.synchronize()
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            torch.cuda.synchronize()
            best = min(best, (time.perf_counter() - t0) / calls * 1e6)
        return best

    from maxsim_forge.codegen._launcher import Launcher

    bare = per_call(lambda: variant.launch(prep.q, d, out=out, **kwargs))
    bare_alloc = per_call(lambda: variant.launch(prep.q, d, **kwargs))
    Launcher.direct_ok = False
    bare_jit = per_call(lambda: variant.launch(prep.q, d, out=out, **kwargs))
    Launcher.direct_ok = True
    api = per_call(lambda: mf.maxsim(q, d))
    lengths = torch.full((4,), 60, device="cuda")
    api_len_novalidate = per_call(lambda: mf.maxsim(q, d, d_lengths=lengths, validate=False))
    api_len = per_call(lambda: mf.maxsim(q, d, d_lengths=lengths))
    return {"bare_launch_us": bare, "bare_launch_through_jit_us": bare_jit,
            "direct_launches": variant.fwd.direct_launches,
            "bare_launch_with_alloc_us": bare_alloc, "maxsim_us": api,
            "maxsim_lengths_validate_false_us": api_len_novalidate, "maxsim_lengths_validated_us": api_len,
            "overhead_us": api - bare_alloc, "variant": route.variant}


def pair_stages(n: int = 64, reps: int = 300) -> dict:
    """Wall time per call of each stage of ``maxsim_pairs`` on n pairs from Python lists."""
    from itertools import accumulate

    import maxsim_forge as mf
    from maxsim_forge._inputs import pack_pairs
    from maxsim_forge._pairs import _try_concat_pairs
    from maxsim_forge.runtime._api import _run

    g = torch.Generator().manual_seed(n)
    qs = [torch.randn(int(a), 128, generator=g).to("cuda", torch.float16) for a in torch.randint(16, 33, (n,), generator=g)]
    ds = [torch.randn(int(b), 128, generator=g).to("cuda", torch.float16) for b in torch.randint(64, 301, (n,), generator=g)]
    mf.maxsim_pairs(qs, ds)
    prep = pack_pairs(qs, ds)
    q_lens, d_lens = _try_concat_pairs(qs, ds)[:2]

    def wall(fn) -> float:
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / reps * 1e6

    def offsets():
        cu = torch.tensor([[0, *accumulate(q_lens)], [0, *accumulate(d_lens)]], dtype=torch.int32)
        return cu.pin_memory().to("cuda", non_blocking=True)

    return {"pairs": n, "checks_and_cats_us": wall(lambda: _try_concat_pairs(qs, ds)), "cat_queries_us": wall(lambda: torch.cat(qs)),
            "cat_docs_us": wall(lambda: torch.cat(ds)), "offsets_to_device_us": wall(offsets),
            "pack_pairs_us": wall(lambda: pack_pairs(qs, ds)), "run_prepared_us": wall(lambda: _run(prep)),
            "maxsim_pairs_us": wall(lambda: mf.maxsim_pairs(qs, ds))}


def first_calls(db: str | None) -> list[dict]:
    """Fresh processes: empty caches (background compile, blocking compile, after
    ``warmup``), then ``cached``: a new process on the caches the warmup one filled, as
    a restarted server finds them."""
    rows = []
    with tempfile.TemporaryDirectory() as kept_tc, tempfile.TemporaryDirectory() as kept_kc:
        for mode in ("background", "blocking", "warmup", "cached"):
            with tempfile.TemporaryDirectory() as tc, tempfile.TemporaryDirectory() as kc:
                if mode in ("warmup", "cached"):
                    tc, kc = kept_tc, kept_kc
                env = dict(os.environ, TRITON_CACHE_DIR=tc, MAXSIM_FORGE_CACHE=kc,
                           MAXSIM_FORGE_COMPILE="blocking" if mode == "blocking" else "background")
                if db:
                    env["MAXSIM_FORGE_DB"] = db
                res = subprocess.run([sys.executable, "-c", _FIRST_CALL, mode], env=env, capture_output=True,
                                     text=True)
                if res.returncode != 0:
                    rows.append({"mode": mode, "error": res.stderr[-2000:]})
                else:
                    rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return rows


def main() -> None:
    os.environ["MAXSIM_FORGE_COMPILE"] = "blocking"  # timed calls run kernels, never the torch stand-in
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", default=None, help="tuned DB the first-call processes use")
    ap.add_argument("--out", default=None, help="JSON file (default: runtime.json in the release folder, "
                    "benchmarks/results/<gpu>-<date>/)")
    args = ap.parse_args()
    import triton

    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "date": time.strftime("%Y-%m-%d"), "host": host_cost(), "pairs_64": pair_stages(),
              "first_call": first_calls(args.db)}
    print(json.dumps(result, indent=1))
    from maxsim_forge.bench import release_folder

    out = Path(args.out) if args.out else release_folder() / "runtime.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as fh:
        json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
