"""Doc tiles through tensor descriptors (TMA) against plain ``tl.load``.

One standalone kernel of the padded one-query case (query tiles over programs, full
doc tiles then a masked tail) loads its doc tiles three ways: ``MODE`` 0 ``tl.load``,
1 a descriptor made in the kernel (``tl.make_tensor_descriptor``, with a scratch
allocator), 2 a host-side ``TensorDescriptor``. Each result is checked against float64
and timed with ``do_bench`` beside maxsim-forge's own call (BENCHMARKS.md, "Tensor
descriptors").

    python benchmarks/explore_tma.py out.json                # 4-5 configs, three modes
    python benchmarks/explore_tma.py out.json sweep          # 27-36 configs, host descriptors
    TRITON_INTERPRET=1 python benchmarks/explore_tma.py x    # correctness on the CPU
"""

import json
import os
import sys
import time

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

INTERP = os.environ.get("TRITON_INTERPRET") == "1"
DEV = "cpu" if INTERP else "cuda"


@triton.jit
def _tile(q, dt, d0, LD, MASK: tl.constexpr, BD: tl.constexpr):
    s = tl.dot(q, tl.trans(dt))
    if MASK:
        s = tl.where((d0 + tl.arange(0, BD))[None, :] < LD, s, float("-inf"))
    return tl.max(s, axis=1)


@triton.jit
def _load(d_ptr, desc, row0, d0, LD, DIM, stride_dt, BD: tl.constexpr, BK: tl.constexpr,
          MODE: tl.constexpr, MASK: tl.constexpr):
    if MODE == 0:
        offs_d = d0 + tl.arange(0, BD)
        offs_k = tl.arange(0, BK)
        ptrs = d_ptr + (row0 + offs_d).to(tl.int64)[:, None] * stride_dt + offs_k[None, :]
        if MASK:
            dt = tl.load(ptrs, mask=(offs_d[:, None] < LD) & (offs_k[None, :] < DIM), other=0.0)
        elif BK == DIM:
            dt = tl.load(ptrs)
        else:
            dt = tl.load(ptrs, mask=offs_k[None, :] < DIM, other=0.0)
    else:
        dt = desc.load([row0 + d0, 0])
    return dt


@triton.jit
def kern(q_ptr, d_ptr, d_desc, out_ptr, NROWS, LQ, LD, DIM, stride_dt, Q_TILES,
         BQ: tl.constexpr, BD: tl.constexpr, BK: tl.constexpr, MODE: tl.constexpr, ONE: tl.constexpr):
    pid = tl.program_id(0)
    pid_q = pid % Q_TILES
    pid_b = pid // Q_TILES
    offs_q = pid_q * BQ + tl.arange(0, BQ)
    offs_k = tl.arange(0, BK)
    q = tl.load(q_ptr + offs_q[:, None] * DIM + offs_k[None, :],
                mask=(offs_q[:, None] < LQ) & (offs_k[None, :] < DIM), other=0.0)
    if MODE == 1:
        desc = tl.make_tensor_descriptor(d_ptr, shape=[NROWS, DIM], strides=[stride_dt, 1], block_shape=[BD, BK])
    elif MODE == 2:
        desc = d_desc
    else:
        desc = d_ptr
    row0 = pid_b * LD
    m = tl.full([BQ], float("-inf"), tl.float32)
    d_full = LD // BD * BD
    for d0 in range(0, d_full, BD):
        dt = _load(d_ptr, desc, row0, d0, LD, DIM, stride_dt, BD, BK, MODE, False)
        m = tl.maximum(m, _tile(q, dt, d0, LD, False, BD))
    if d_full < LD:
        dt = _load(d_ptr, desc, row0, d_full, LD, DIM, stride_dt, BD, BK, MODE, True)
        m = tl.maximum(m, _tile(q, dt, d_full, LD, True, BD))
    score = tl.sum(tl.where(offs_q < LQ, m, 0.0), axis=0)
    if ONE:
        tl.store(out_ptr + pid_b, score)
    else:
        tl.atomic_add(out_ptr + pid_b, score)


def run(q, d, bq, bd, warps, stages, mode):
    B, LD, DIM = d.shape
    LQ = q.shape[0]
    bk = triton.next_power_of_2(DIM)
    q_tiles = triton.cdiv(LQ, bq)
    d2 = d.view(B * LD, DIM)
    desc = TensorDescriptor(d2, shape=[B * LD, DIM], strides=[DIM, 1], block_shape=[bd, bk]) if mode == 2 else None
    one = q_tiles == 1
    out = (torch.empty if one else torch.zeros)(B, device=d.device, dtype=torch.float32)
    kern[(q_tiles * B,)](q, d2, desc, out, B * LD, LQ, LD, DIM, DIM, q_tiles, BQ=bq, BD=bd, BK=bk,
                         MODE=mode, ONE=one, num_warps=warps, num_stages=stages)
    return out


def ref(q, d):
    return torch.einsum("qk,bdk->bqd", q.double(), d.double()).amax(2).sum(1)


CASES = {
    "colbert-1k-fp16": (32, 300, 1000, 128, [(32, 64, 4, 3), (32, 64, 4, 4), (32, 128, 4, 3), (32, 64, 2, 4), (32, 32, 2, 4)]),
    "colbert-10k-fp16": (32, 300, 10000, 128, [(32, 64, 4, 3), (32, 64, 4, 4), (32, 128, 4, 3), (32, 64, 2, 4)]),
    "colbert-10k-dim96": (32, 300, 10000, 96, [(32, 64, 4, 3), (32, 64, 4, 4), (32, 64, 2, 3), (32, 128, 4, 3)]),
    "colpali-1k": (32, 1030, 1000, 128, [(32, 64, 4, 3), (32, 64, 4, 4), (32, 128, 4, 3), (32, 128, 8, 4)]),
    "image-query-1k": (1024, 1024, 1000, 128, [(128, 64, 8, 3), (256, 64, 8, 3), (128, 128, 8, 3), (256, 64, 8, 4), (128, 64, 4, 3)]),
}


SWEEP = {
    "colbert-1k-fp16": [(32, bd, w, st) for bd in (32, 64, 128, 256) for w in (2, 4, 8) for st in (2, 3, 4, 5)],
    "colbert-10k-dim96": [(32, bd, w, st) for bd in (32, 64, 128, 256) for w in (2, 4, 8) for st in (2, 3, 4, 5)],
    "colbert-10k-fp16": [(32, bd, w, st) for bd in (64, 128, 256) for w in (2, 4, 8) for st in (2, 3, 4)],
    "image-query-1k": [(bq, bd, w, st) for bq in (128, 256) for bd in (32, 64, 128) for w in (4, 8) for st in (2, 3, 4)],
}


def main():
    if len(sys.argv) > 2 and sys.argv[2] == "sweep":
        for name, cfgs in SWEEP.items():
            lq, ld, b, dim, _ = CASES[name]
            CASES[name] = (lq, ld, b, dim, cfgs)
        sys.argv[2] = ",".join(SWEEP)
        main.modes = (2,)
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device=DEV))
    res = {"gpu": torch.cuda.get_device_name() if not INTERP else "interp", "triton": triton.__version__,
           "torch": torch.__version__, "cases": {}}
    if INTERP:
        for (lq, ld, b, dim) in [(5, 37, 3, 96), (40, 70, 2, 128), (3, 16, 2, 64)]:
            q = torch.randn(lq, dim, dtype=torch.float16)
            d = torch.randn(b, ld, dim, dtype=torch.float16)
            for mode in (0, 1, 2):
                for bq, bd in ((16, 16), (32, 32)):
                    o = run(q, d, bq, bd, 4, 2, mode)
                    err = ((o.double() - ref(q, d)).abs().max() / ref(q, d).abs().max()).item()
                    print(lq, ld, b, dim, mode, bq, bd, f"{err:.1e}")
                    if err > 1e-2:
                        raise SystemExit(f"mode {mode} wrong: relative error {err:.1e}")
        return
    from triton.testing import do_bench

    os.environ["MAXSIM_FORGE_COMPILE"] = "blocking"
    import maxsim_forge as mf
    for name, (lq, ld, b, dim, cfgs) in CASES.items():
        if len(sys.argv) > 2 and name not in sys.argv[2].split(","):
            continue
        torch.manual_seed(0)
        q = torch.randn(lq, dim, device="cuda", dtype=torch.float16)
        d = torch.randn(b, ld, dim, device="cuda", dtype=torch.float16)
        r = ref(q, d).float()
        rows = {}
        mfo = mf.maxsim(q, d)
        rows["maxsim-forge-err"] = ((mfo - r).abs().max() / r.abs().max()).item()
        rows["maxsim-forge"] = do_bench(lambda: mf.maxsim(q, d), warmup=25, rep=200, quantiles=[0.2, 0.5, 0.8])
        for cfg in cfgs:
            for mode in getattr(main, 'modes', (0, 1, 2)):
                key = f"q{cfg[0]}-d{cfg[1]}-w{cfg[2]}-s{cfg[3]}-m{mode}"
                try:
                    t0 = time.perf_counter()
                    o = run(q, d, *cfg, mode); torch.cuda.synchronize()
                    c = time.perf_counter() - t0
                    err = ((o - r).abs().max() / r.abs().max()).item()
                    t = do_bench(lambda: run(q, d, *cfg, mode), warmup=25, rep=200, quantiles=[0.2, 0.5, 0.8])
                    rows[key] = dict(ms=t, err=err, compile_s=round(c, 2))
                except Exception as exc:  # noqa: BLE001 (a config that does not compile is a result)
                    rows[key] = repr(exc)[:300]
                if len(getattr(main, 'modes', ())) != 1:
                    print(name, key, rows[key], flush=True)
        best = sorted((v["ms"][1], k) for k, v in rows.items() if isinstance(v, dict))[:6]
        print(name, "best", best, flush=True)
        print(name, "maxsim-forge", rows["maxsim-forge"], flush=True)
        res["cases"][name] = rows
        json.dump(res, open(sys.argv[1], "w"), indent=1)


if __name__ == "__main__":
    main()
