"""Folded query rows in one tile (each query's sum stored) against the same rows in
several tiles (atomic adds), as the query count grows and the queries shorten.

    python benchmarks/explore_fold_store.py out.json          # 128 rows: 4 x 32 ... 128 x 1
    ROWS=64 python benchmarks/explore_fold_store.py out.json  # 64 rows: 2 x 32 ... 64 x 1

4000 docs (packed with skewed lengths, and padded at Ld 300), fp16, dim 128; each
result is checked against float64 (BENCHMARKS.md, "Many short queries in one tile").
"""

import json
import os
import sys

import torch
from maxsim_forge.codegen import KernelSpec, KernelConfig
from maxsim_forge.runtime import launch_prepared, default_config
from maxsim_forge._problems import Sizes, synth
from maxsim_forge.tuner._timing import time_cuda

if os.environ.get("ROWS") == "64":
    CFGS = {
        "one tile q64 s1": KernelConfig(block_q=64, block_d=64, block_k=128, num_warps=4, num_stages=1, q_mode="fold"),
        "two tiles q32 w4 s1": KernelConfig(block_q=32, block_d=64, block_k=128, num_warps=4, num_stages=1, q_mode="fold"),
        "two tiles q32 w2 s3": KernelConfig(block_q=32, block_d=64, block_k=128, num_warps=2, num_stages=3, q_mode="fold"),
    }
    SHAPES = ((2, 32), (4, 16), (8, 8), (16, 4), (32, 2), (64, 1))
else:
    CFGS = {
        "one tile q128 s3": KernelConfig(block_q=128, block_d=64, block_k=128, num_warps=4, num_stages=3, q_mode="fold"),
        "two tiles q64 s1": KernelConfig(block_q=64, block_d=64, block_k=128, num_warps=4, num_stages=1, q_mode="fold"),
        "two tiles q64 s3": KernelConfig(block_q=64, block_d=64, block_k=128, num_warps=4, num_stages=3, q_mode="fold"),
        "four tiles q32 s3": KernelConfig(block_q=32, block_d=64, block_k=128, num_warps=2, num_stages=3, q_mode="fold"),
    }
    SHAPES = ((4, 32), (8, 16), (16, 8), (32, 4), (64, 2), (128, 1))


def main():
    res = []
    print(torch.cuda.get_device_name(), flush=True)
    for layout in ("packed", "allpairs"):
        for nq, lq in SHAPES:
            spec = KernelSpec(layout, "fp16", 128, "tf32", "none", "none")
            sizes = Sizes(nq, lq, 4000, 300)
            prob = synth(spec, sizes, device="cuda", seed=1, skew=(layout == "packed"))
            ref = prob.expected().float()
            row = dict(layout=layout, nq=nq, lq=lq, heuristic=default_config(prob.prep.spec, **prob.prep.sizes).key())
            for name, cfg in CFGS.items():
                out = launch_prepared(prob.prep, cfg)
                err = ((out.float() - ref).abs().max() / ref.abs().max()).item()
                t = time_cuda(lambda: launch_prepared(prob.prep, cfg), rep_ms=150).median_ms
                row[name] = round(t, 4) if err <= 1e-3 else f"err {err:.1e}"
            print(json.dumps(row), flush=True)
            res.append(row)
    json.dump(res, open(sys.argv[1], "w"), indent=1)


if __name__ == "__main__":
    main()
