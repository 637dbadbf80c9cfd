"""Compute-bound MaxSim outside the template: one program per (query tile, doc) against a
persistent grid whose programs keep their query tile and run one flattened loop over
(doc, doc tile); the row max per tile or deferred to the doc's end. Every doc tile is
masked here, unlike the template's full tiles.

    python benchmarks/explore_persistent.py [image-query,16q]   # on a GPU; OUT=dir writes persist.json
    TRITON_INTERPRET=1 python benchmarks/explore_persistent.py   # checks, tiny shapes

Results: benchmarks/results/persistent-grid-h100-2026-11-27.log (image-query, H100) and
persistent-grid-16q-h200-2026-11-27.{json,log} (16 queries, H200), both timed before
the shared setup and epilogue moved into the helpers below (the same operations).
"""
import itertools
import json
import os
import sys

import torch
import triton
import triton.language as tl

from maxsim_forge.reference import maxsim_reference

DEV = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"


@triton.jit
def _query_tile(q_ptr, qt, NROWS, stride_qr, DIM: tl.constexpr, BQ: tl.constexpr):
    offs_m = qt * BQ + tl.arange(0, BQ)
    row_in = offs_m < NROWS
    q = tl.load(q_ptr + offs_m[:, None] * stride_qr + tl.arange(0, DIM)[None, :], mask=row_in[:, None], other=0.0)
    return offs_m, row_in, q


@triton.jit
def _tile_scores(q, d_base, d0, LD, stride_dt, DIM: tl.constexpr, BD: tl.constexpr):
    # One masked doc tile's scores; tokens past the doc at -inf.
    offs_d = d0 + tl.arange(0, BD)
    d_in = offs_d < LD
    dt = tl.load(d_base + offs_d[:, None] * stride_dt + tl.arange(0, DIM)[None, :], mask=d_in[:, None], other=0.0)
    return tl.where(d_in[None, :], tl.dot(q, tl.trans(dt)), float("-inf"))


@triton.jit
def _add_scores(out_ptr, offs_m, row_in, m, b, LQ, stride_on, FOLD: tl.constexpr):
    m = tl.where(row_in, m, 0.0)
    if FOLD:
        tl.atomic_add(out_ptr + (offs_m // LQ) * stride_on + b, m, mask=row_in)
    else:
        tl.atomic_add(out_ptr + b, tl.sum(m, axis=0))


@triton.jit
def _grid_kernel(q_ptr, d_ptr, out_ptr, NROWS, LQ, NB, LD, QP, stride_qr, stride_db, stride_dt, stride_on,
                 DIM: tl.constexpr, BQ: tl.constexpr, BD: tl.constexpr, DEFER: tl.constexpr, FOLD: tl.constexpr):
    pid = tl.program_id(0)
    b = pid // QP
    offs_m, row_in, q = _query_tile(q_ptr, pid % QP, NROWS, stride_qr, DIM, BQ)
    m = tl.full([BQ], float("-inf"), tl.float32)
    acc = tl.full([BQ, BD], float("-inf"), tl.float32)
    d_base = d_ptr + b.to(tl.int64) * stride_db
    for d0 in range(0, LD, BD):
        s = _tile_scores(q, d_base, d0, LD, stride_dt, DIM, BD)
        if DEFER:
            acc = tl.maximum(acc, s)
        else:
            m = tl.maximum(m, tl.max(s, axis=1))
    if DEFER:
        m = tl.max(acc, axis=1)
    _add_scores(out_ptr, offs_m, row_in, m, b, LQ, stride_on, FOLD)


@triton.jit
def _persist_kernel(q_ptr, d_ptr, out_ptr, NROWS, LQ, NB, LD, QP, LANES, stride_qr, stride_db, stride_dt, stride_on,
                    DIM: tl.constexpr, BQ: tl.constexpr, BD: tl.constexpr, DEFER: tl.constexpr, FOLD: tl.constexpr):
    pid = tl.program_id(0)
    lane = pid // QP
    offs_m, row_in, q = _query_tile(q_ptr, pid % QP, NROWS, stride_qr, DIM, BQ)
    tiles = tl.cdiv(LD, BD)
    n_docs = tl.cdiv(NB - lane, LANES)
    m = tl.full([BQ], float("-inf"), tl.float32)
    acc = tl.full([BQ, BD], float("-inf"), tl.float32)
    for it in range(0, n_docs * tiles):
        j = it // tiles
        t = it - j * tiles
        b = lane + j * LANES
        s = _tile_scores(q, d_ptr + b.to(tl.int64) * stride_db, t * BD, LD, stride_dt, DIM, BD)
        if DEFER:
            acc = tl.maximum(acc, s)
        else:
            m = tl.maximum(m, tl.max(s, axis=1))
        if t == tiles - 1:
            if DEFER:
                mm = tl.max(acc, axis=1)
                acc = tl.full([BQ, BD], float("-inf"), tl.float32)
            else:
                mm = m
                m = tl.full([BQ], float("-inf"), tl.float32)
            _add_scores(out_ptr, offs_m, row_in, mm, b, LQ, stride_on, FOLD)


def run(kind, q2, d, nq, lq, bq, bd, w, s, defer, lanes_per_sm=1):
    nrows, dim = q2.shape
    nb, ld, _ = d.shape
    out = torch.zeros((nq, nb), dtype=torch.float32, device=d.device)
    qp = triton.cdiv(nrows, bq)
    fold = nq > 1
    args = (q2, d, out, nrows, lq, nb, ld, qp)
    strides = (q2.stride(0), d.stride(0), d.stride(1), out.stride(0))
    meta = dict(DIM=dim, BQ=bq, BD=bd, DEFER=defer, FOLD=fold, num_warps=w, num_stages=s)
    if kind == "grid":
        _grid_kernel[(qp * nb,)](*args, *strides, **meta)
    else:
        sms = torch.cuda.get_device_properties(d.device).multi_processor_count if d.is_cuda else 2
        lanes = max(1, min(nb, sms * lanes_per_sm // qp))
        _persist_kernel[(qp * lanes,)](*args, lanes, *strides, **meta)
    return out


BENCH_CASE = {"image-query": "image-query-1k", "16q": "16-queries-x-1k"}


def main():
    cuda = DEV == "cuda"
    cases = {"image-query": (1, 1024, 1024, 1000), "16q": (16, 32, 300, 1000)} if cuda else \
        {"image-query": (1, 40, 37, 5), "16q": (3, 8, 29, 4)}
    res = {}
    from maxsim_forge.tuner._timing import time_fn
    only = sys.argv[1].split(",") if len(sys.argv) > 1 else list(cases)
    for name, (nq, lq, ld, nb) in cases.items():
        if name not in only:
            continue
        g = torch.Generator().manual_seed(0)
        q = torch.randn(nq, lq, 128, generator=g).to(DEV, torch.float16)
        d = torch.randn(nb, ld, 128, generator=g).to(DEV, torch.float16)
        ref = maxsim_reference(q, d)  # float64, in chunks of docs
        q2 = q.reshape(nq * lq, 128)
        t = (lambda fn: time_fn(fn, device="cuda", rep_ms=200).median_ms) if cuda else (lambda fn: 0.0)
        rows = {}
        if cuda:
            os.environ["MAXSIM_FORGE_COMPILE"] = "blocking"  # time the kernel, not torch while it compiles
            import maxsim_forge as mf
            from maxsim_forge.bench import make_inputs, CASES, _flash, _lik
            qq = q[0] if nq == 1 else q
            rows["forge-api"] = t(lambda: mf.maxsim(qq, d, validate=False))
            c = next(c for c in CASES if c.name == BENCH_CASE[name])
            x = make_inputs(c, "cuda")
            for pn, mk in (("flash", _flash), ("lik", _lik)):
                try:
                    f = mk(x); f(); rows[pn] = t(f)
                except Exception as e:
                    rows[pn] = repr(e)[:60]
        tiles = [(128, 64, 4), (128, 64, 8), (256, 64, 8)] if nq > 1 else \
            [(128, 64, 4), (128, 64, 8), (128, 128, 8), (256, 64, 8), (256, 128, 8), (128, 128, 4)]
        grid = [(bq, bd, w, st) for bq, bd, w in tiles for st in (2, 3)] if cuda else [(16, 16, 4, 2), (32, 16, 4, 1)]
        kinds = [("grid", 1), ("persist", 1), ("persist", 2)] if cuda else [("grid", 1), ("persist", 1)]
        for (bq, bd, w, st), defer, (kind, lps) in itertools.product(grid, (False, True), kinds):
            key = f"{kind}{lps}-q{bq}-d{bd}-w{w}-s{st}{'-defer' if defer else ''}"
            try:
                out = run(kind, q2, d, nq, lq, bq, bd, w, st, defer, lps)
                err = ((out.double() - ref.to(out.device)).abs().max() / ref.abs().max()).item()
                if err > 1e-2:
                    rows[key] = f"WRONG {err:.2e}"
                    continue
                rows[key] = t(lambda: run(kind, q2, d, nq, lq, bq, bd, w, st, defer, lps))
            except Exception as e:
                rows[key] = repr(e)[:80]
        res[name] = rows
        num = sorted((v, k) for k, v in rows.items() if isinstance(v, float))
        if not cuda:
            print(f"== {name}: {len(num)} configs match float64 (no timings off the GPU)")
            continue
        print(f"== {name}: forge-api {rows.get('forge-api')} flash {rows.get('flash')} lik {rows.get('lik')}")
        for v, k in num[:25]:
            print(f"   {k:40s} {v:.4f}")
        bad = {k: v for k, v in rows.items() if not isinstance(v, float)}
        print(f"   not timed: {len(bad)} e.g. {list(bad.items())[:3]}")
    if os.environ.get("OUT"):
        json.dump(res, open(os.path.join(os.environ["OUT"], "persist.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
