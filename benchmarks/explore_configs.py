"""Sweep sampled configs per case on a GPU, next to the peers, to learn the landscape.

    python benchmarks/explore_configs.py --samples 48 --out $OUT/explore.json

Prints, per case: the floor, torch eager, flash-maxsim, late-interaction-kernels, the
heuristic default and the best sampled configs. Every timed variant is first checked
against a reference.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from maxsim_forge.codegen import KernelSpec
from maxsim_forge.runtime import default_config, launch_prepared
from maxsim_forge.tuner._compile import CompileJob, compile_many
from maxsim_forge._problems import Sizes, synth
from maxsim_forge.bench import measure_floors
from maxsim_forge.tuner._space import sample_configs
from maxsim_forge.tuner._timing import time_cuda

CASES = {
    # name: (layout, dtype, dim, q_mask, d_mask, nq, lq, nb, ld)
    "colbert_1k": ("padded", "fp16", 128, "none", "none", 1, 32, 1000, 300),
    "colbert_10k": ("padded", "fp16", 128, "none", "none", 1, 32, 10000, 300),
    "colbert_10k_bf16": ("padded", "bf16", 128, "none", "none", 1, 32, 10000, 300),
    "colpali_1k": ("padded", "fp16", 128, "none", "none", 1, 32, 1000, 1030),
    "image_query": ("padded", "fp16", 128, "none", "none", 1, 1024, 1000, 1024),
    "ragged_4k": ("padded", "fp16", 128, "none", "lengths", 1, 32, 4000, 512),
    "multi_16x1k": ("allpairs", "fp16", 128, "none", "none", 16, 32, 1000, 300),
    "packed_50k": ("packed", "fp16", 128, "none", "none", 1, 32, 50000, 512),
    "dim96_10k": ("padded", "fp16", 96, "none", "none", 1, 32, 10000, 300),
    "pairs_1k": ("pairs", "fp16", 128, "none", "none", 1, 32, 1000, 300),
}


def peers(name, prob, spec):
    out = {}
    p = prob.prep
    q, d = p.q, p.d
    k = p.launch_kwargs
    try:
        import flash_maxsim as fm

        if spec.layout == "padded":
            out["flash-maxsim"] = lambda: fm.flash_maxsim(q[0], d, k.get("d_lengths"))
        elif spec.layout == "allpairs":
            out["flash-maxsim"] = lambda: fm.flash_maxsim_batched(q, d)
        elif spec.layout == "packed":
            out["flash-maxsim"] = lambda: fm.flash_maxsim_packed(q[0], d, k["d_cu"], max_seqlen_d=k["ld"])
    except Exception as exc:  # noqa: BLE001
        print("flash-maxsim unavailable:", exc)
    try:
        import late_interaction_kernels as lik

        if spec.layout in ("padded", "allpairs") and k.get("d_lengths") is None:
            out["lik"] = lambda: lik.maxsim(q, d)
    except Exception as exc:  # noqa: BLE001
        print("late-interaction-kernels unavailable:", exc)
    if spec.layout in ("padded", "allpairs") and q.shape[1] * d.shape[1] * d.shape[0] * q.shape[0] < 4e9:
        def eager():
            s = torch.einsum("nqk,btk->nbqt", q, d)
            return s.amax(-1).float().sum(-1)
        out["torch"] = eager
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=48)
    ap.add_argument("--workers", type=int, default=14)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--out", default="explore.json")
    args = ap.parse_args()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    bw, peak = measure_floors("cuda")
    print(f"{torch.cuda.get_device_name()}  copy {bw / 1e12:.2f} TB/s  fp16 mm {peak / 1e12:.0f} TFLOP/s")
    rows = []
    for name in args.cases.split(","):
        layout, dtype, dim, qm, dm, nq, lq, nb, ld = CASES[name]
        spec = KernelSpec(layout, dtype, dim, "tf32", qm, dm)
        sizes = Sizes(nq, lq, nb, ld)
        prob = synth(spec, sizes, device="cuda", seed=1, skew=(layout == "packed"))
        spec = prob.prep.spec
        heur = default_config(spec, **prob.prep.sizes, sm_count=sms)
        cands = [heur] + [c for c in sample_configs(spec, sizes, args.samples, sm_count=sms, seed=2) if c != heur]
        t0 = time.time()
        status = compile_many([CompileJob(spec, c, sizes, "cuda") for c in cands], workers=args.workers)
        t_compile = time.time() - t0
        ref = None
        if nq * lq * nb * ld * dim < 3e11:
            ref = prob.expected().float()
        nbytes = prob.prep.d.numel() * prob.prep.d.element_size()
        flops = 2 * nq * lq * dim * (prob.prep.d.shape[0] if layout in ("packed", "pairs") else nb * ld)
        floor_ms = max(nbytes / bw, flops / peak) * 1e3
        results = []
        for cfg, (st, msg) in zip(cands, status):
            if st != "ok":
                results.append((cfg.key(), st, None, msg[-200:]))
                continue
            out = launch_prepared(prob.prep, cfg)
            if ref is not None:
                err = ((out.float() - ref).abs().max() / ref.abs().max()).item()
                if not err <= 1e-4:
                    results.append((cfg.key(), "mismatch", None, f"err {err:.2e}"))
                    continue
            t = time_cuda(lambda: launch_prepared(prob.prep, cfg)).median_ms
            results.append((cfg.key(), "ok", t, ""))
        timed = sorted([r for r in results if r[2] is not None], key=lambda r: r[2])
        peer_t = {}
        for pname, fn in peers(name, prob, spec).items():
            try:
                fn()
                peer_t[pname] = time_cuda(fn).median_ms
            except Exception as exc:  # noqa: BLE001
                peer_t[pname] = None
                print(f"  {pname} failed: {exc!r}"[:300])
        heur_t = next((r[2] for r in results if r[0] == heur.key()), None)
        fails = [r for r in results if r[1] != "ok"]
        print(f"\n== {name}  floor {floor_ms:.4f} ms  compile {t_compile:.0f}s for {len(cands)}  fails {len(fails)}")
        for pname, t in peer_t.items():
            print(f"  {pname:14s} {t if t is None else round(t, 4)}")
        print(f"  heuristic      {heur_t}  {heur.key()}")
        for r in timed[:5]:
            print(f"  best           {r[2]:.4f}  {r[0]}  ({floor_ms / r[2] * 100:.0f}% of floor)")
        for r in fails[:3]:
            print(f"  fail {r[1]} {r[0]} {r[3]}")
        rows.append(dict(case=name, floor_ms=floor_ms, peers=peer_t, heuristic=[heur.key(), heur_t],
                         results=results))
    with open(args.out, "w") as fh:
        json.dump(dict(gpu=torch.cuda.get_device_name(), bw=bw, peak=peak, rows=rows), fh, indent=1)


if __name__ == "__main__":
    main()
