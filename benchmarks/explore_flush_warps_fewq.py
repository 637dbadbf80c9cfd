"""Three measurements, each in one process on one GPU:

- ``w16``: 16-warp tiles (128 and 256 rows; 64-, 128- and 256-token doc tiles) at
  image-query and 16 queries, against the current pick and the same tiles on 8 warps;
- ``l2``: ``do_bench``'s flush (a 256 MB ``zero_``, which leaves L2 dirty) against a
  read flush (L2 clean) for the memory-bound cases: maxsim-forge, the peers and a
  plain torch read of the docs;
- ``fewq``: 2, 4 and 8 shared queries: the lookup's pick, the heuristic, the peers.

    python benchmarks/explore_flush_warps_fewq.py l2 colbert-1k-fp16,colpali-1k
    python benchmarks/explore_flush_warps_fewq.py w16 image-query-1k,16-queries-x-1k
    MAXSIM_FORGE_DB=tuned.db python benchmarks/explore_flush_warps_fewq.py fewq after

Writes ``<what>-<args>.json`` into ``$OUT`` (default: the current directory).
"""

import itertools
import json
import os
import sys

os.environ["MAXSIM_FORGE_COMPILE"] = "blocking"  # timed calls run the kernels

import torch  # noqa: E402

import maxsim_forge as mf  # noqa: E402
from maxsim_forge.bench import CASES, Case, make_inputs, _flash, _lik, _forge
from maxsim_forge._inputs import prepare_padded
from maxsim_forge._problems import Sizes
from maxsim_forge.codegen import KernelConfig, load_variant, validate, ConfigError
from maxsim_forge.reference import maxsim_reference
from maxsim_forge.runtime import default_config
from maxsim_forge.runtime._keys import gpu_info
from maxsim_forge.tuner._compile import CompileJob, CompilePool
from maxsim_forge.tuner._timing import time_fn

OUT = os.environ.get("OUT", ".")


def t(fn) -> float:
    return time_fn(fn, device="cuda", rep_ms=150).median_ms


def w16(names):
    gpu = gpu_info(torch.device("cuda"))
    pool = CompilePool(15)
    res = {}
    for name in names:
        case = next(c for c in CASES if c.name == name)
        x = make_inputs(case, "cuda")
        prep = prepare_padded(x.q, x.d)
        dec = mf.explain(x.q, x.d)
        spec = prep.spec
        pick = KernelConfig.from_dict(dec.config)
        modes = ("fold", "persist") if case.nq > 1 else ("grid",)
        cands = [pick]
        for bq, bd, w, s, mode, defer in itertools.product(
                (128, 256), (64, 128, 256), (8, 16), (2, 3, 4), modes, (False, True)):
            cands.append(KernelConfig(block_q=bq, block_d=bd, block_k=128, num_warps=w, num_stages=s,
                                      q_mode=mode, defer_max=defer))
        ok = []
        for c in dict.fromkeys(cands):
            try:
                validate(spec, c, smem_limit=gpu.smem_limit)
                ok.append(c)
            except ConfigError:
                pass
        print(f"{name}: {len(ok)} configs", flush=True)
        pool.run([CompileJob(spec, c, Sizes(case.nq, case.lq, case.nb, case.ld), "cuda", gpu.smem_limit) for c in ok])
        ref = maxsim_reference(x.q, x.d)
        rows = {}
        for c in ok:
            try:
                m = load_variant(spec, c, smem_limit=gpu.smem_limit)
                fn = lambda m=m: m.launch(prep.q, prep.d, **prep.launch_kwargs)
                out = fn().double().reshape(ref.shape)
                err = ((out - ref).abs().max() / ref.abs().max()).item()
                rows[c.key()] = (t(fn) if err < 1e-3 else float("nan"), err)
            except Exception as e:  # noqa: BLE001
                rows[c.key()] = (float("nan"), repr(e)[:100])
        peers = {}
        for pn, mk in (("flash", _flash), ("lik", _lik)):
            try:
                f = mk(x); f(); peers[pn] = t(f)
            except Exception as e:  # noqa: BLE001
                peers[pn] = repr(e)[:80]
        pk = pick.key()
        res[name] = {"pick": pk, "source": dec.source, "rows": rows, "peers": peers}
        print(f"== {name} pick {pk} ({dec.source}) {rows[pk][0]:.4f} peers {peers}", flush=True)
        good = sorted(((v[0], k) for k, v in rows.items() if v[0] == v[0]))
        for ms, k in good[:16]:
            print(f"   {k:48s} {ms:.4f}", flush=True)
        by_w = {}
        for ms, k in good:
            w = [p for p in k.split("-") if p.startswith("w")][0]
            by_w.setdefault(w, ms)
        print("   best per warps:", by_w, "failed:", [k for k, v in rows.items() if v[0] != v[0]][:8], flush=True)
    return res


def time_flush(fn, mode, n=200):
    """Events around each call, the L2 flushed before each: 'write' as do_bench (a 256 MB
    zero_, which leaves dirty lines), 'read' (a read of 256 MB: clean lines)."""
    buf = torch.empty(64 << 20, dtype=torch.int32, device="cuda")
    buf.fill_(1)
    flush = buf.zero_ if mode == "write" else (lambda: buf.amax())
    for _ in range(10):
        flush(); fn()
    st = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    en = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for i in range(n):
        flush()
        st[i].record(); fn(); en[i].record()
    torch.cuda.synchronize()
    ms = sorted(a.elapsed_time(b) for a, b in zip(st, en))
    return ms[n // 2]


def l2(names):
    from maxsim_forge.bench import measure_floors
    bw, peak = measure_floors("cuda")
    res = {"copy_bw": bw, "peak": peak, "cases": {}}
    print(f"copy bw {bw / 1e12:.3f} TB/s", flush=True)
    for name in names:
        case = next(c for c in CASES if c.name == name)
        x = make_inputs(case, "cuda")
        floor = x.nbytes() / bw * 1e3
        d = x.d if x.d is not None else x.d_packed
        fns = {"maxsim-forge": _forge(x), "flash-maxsim": _flash(x), "lik": _lik(x),
               "torch-sum": lambda: d.sum(), "torch-amax": lambda: d.amax()}
        row = {"floor_ms": floor}
        for k, f in fns.items():
            if f is None:
                continue
            f()
            row[k] = {"do_bench": t(f), "write": time_flush(f, "write"), "read": time_flush(f, "read")}
            r = row[k]
            print(f"{name:20s} {k:14s} do_bench {r['do_bench']:.4f}  write {r['write']:.4f}  read {r['read']:.4f}"
                  f"   floor% {100 * floor / r['do_bench']:.1f} / {100 * floor / r['read']:.1f}", flush=True)
        res["cases"][name] = row
    return res


def fewq(tag):
    res = {}
    for dtype in ("fp16", "bf16"):
        for nq in (2, 4, 8):
            case = Case(f"{nq}-queries-x-1k-{dtype}", "allpairs", 32, 300, 1000, nq=nq, dtype=dtype)
            x = make_inputs(case, "cuda")
            dec = mf.explain(x.q, x.d)
            row = {"pick": dec.variant, "source": dec.source, "forge": t(_forge(x))}
            prep = prepare_padded(x.q, x.d)
            heur = default_config(prep.spec, **prep.sizes)
            m = load_variant(prep.spec, heur)
            row["heuristic"] = (heur.key(), t(lambda: m.launch(prep.q, prep.d, **prep.launch_kwargs)))
            for pn, mk in (("flash", _flash), ("lik", _lik)):
                try:
                    f = mk(x); f(); row[pn] = t(f)
                except Exception as e:  # noqa: BLE001
                    row[pn] = repr(e)[:80]
            best = min(v for k, v in row.items() if k in ("flash", "lik") and isinstance(v, float))
            print(f"[{tag}] {case.name:24s} forge {row['forge']:.4f} ({dec.variant}, {dec.source}) "
                  f"heur {row['heuristic'][1]:.4f} ({row['heuristic'][0]}) flash {row['flash']} lik {row['lik']} "
                  f"-> {best / row['forge']:.3f}x", flush=True)
            res[case.name] = row
    return res


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "w16":
        r = w16(sys.argv[2].split(","))
    elif what == "l2":
        r = l2(sys.argv[2].split(","))
    else:
        r = fewq(sys.argv[2])
    json.dump(r, open(os.path.join(OUT, f"{what}-{sys.argv[-1].replace(',', '_')[:40]}.json"), "w"), indent=1)
