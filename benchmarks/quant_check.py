"""Quantized documents on a GPU: every compiled path checked against float64, then timed
against maxsim-forge's own fp16 and the peers' quantized kernels, in one process.

    python benchmarks/quant_check.py [--rounds 3] [--out quant.json] [--peers]

Cases (dim 128, fp16 queries): ColBERT B 10k full docs (Lq 32, Ld 300), ColBERT B 1k, and
image as query (Lq 1024 over B 1000 of Ld 1024). Paths: fp16 docs; int8 and fp8 docs
dequantized in registers; int8 x int8 and fp8 x fp8 (the query quantized too). Each path
is checked (whole output) against the float64 reference on the tokens it scores (the
dequantized docs, and query where quantized) before it is timed; timings are
``triton.testing.do_bench`` medians, paths alternated round by round. With ``--peers``,
flash-maxsim's int8 and late-interaction-kernels' fp8 scoring are timed on the same
inputs (each autotuned on the case first). Needs a CUDA GPU; ``--device cpu --tiny`` runs
the same steps through Triton's interpreter on small shapes (its timings mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("MAXSIM_FORGE_COMPILE", "blocking")  # the kernel answers the first call

import torch  # noqa: E402

CASES = {
    "colbert-10k": dict(lq=32, nb=10000, ld=300),
    "colbert-1k": dict(lq=32, nb=1000, ld=300),
    "image-query-1k": dict(lq=1024, nb=1000, ld=1024),
}
PATHS = ("fp16", "int8", "fp8_e4m3", "int8 x int8", "fp8 x fp8")


def _paths(q, d):
    import maxsim_forge as mf

    docs = {fmt: mf.quantize(d, fmt) for fmt in ("int8", "fp8_e4m3")}
    return {
        "fp16": (lambda: mf.maxsim(q, d, validate=False), None),
        "int8": (lambda: mf.maxsim(q, docs["int8"], validate=False), (docs["int8"], False)),
        "fp8_e4m3": (lambda: mf.maxsim(q, docs["fp8_e4m3"], validate=False), (docs["fp8_e4m3"], False)),
        "int8 x int8": (lambda: mf.maxsim(q, docs["int8"], quantize_query=True, validate=False), (docs["int8"], True)),
        "fp8 x fp8": (lambda: mf.maxsim(q, docs["fp8_e4m3"], quantize_query=True, validate=False),
                      (docs["fp8_e4m3"], True)),
    }


def _reference(q, d, quant):
    from maxsim_forge.quant import quantize_rows
    from maxsim_forge.reference import maxsim_reference

    if quant is None:
        return maxsim_reference(q, d)
    docs, qq = quant
    qr = q.double()
    if qq:
        codes, scales = quantize_rows(q, docs.format)
        qr = codes.double() * scales.double()[..., None]
    return maxsim_reference(qr, docs.dequantize(torch.float64))


def _time(fn, device: str) -> float:
    """Median milliseconds of ``fn``: CUDA events after an L2 flush on a GPU, a wall clock elsewhere."""
    if device == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--out", default=None)
    ap.add_argument("--peers", action="store_true")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--tiny", action="store_true", help="small shapes (for the interpreter)")
    args = ap.parse_args()
    if args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton loads
    import triton

    from maxsim_forge.runtime import explain

    rows = []
    for name in args.cases.split(","):
        c = CASES[name]
        if args.tiny:
            c = {k: min(v, 24) for k, v in c.items()}
        dim = 32 if args.tiny else 128
        g = torch.Generator().manual_seed(0)
        q = torch.randn(c["lq"], dim, generator=g).to(args.device, torch.float16)
        d = torch.randn(c["nb"], c["ld"], dim, generator=g).to(args.device, torch.float16)
        paths = _paths(q, d)
        if args.peers:
            from peer_quant import peer_calls

            paths.update(peer_calls(q, d))
        checked = {}
        for path, (fn, quant) in paths.items():
            out = fn().double()
            if path.startswith("peer "):
                ref = _reference(q, d, None)
            else:
                ref = _reference(q, d, quant)
            scale = float(ref.abs().max())
            err = float((out - ref).abs().max()) / scale
            checked[path] = err
            print(f"{name:15s} {path:24s} max error {err:.2e} vs float64 "
                  f"({'on its own tokens' if not path.startswith('peer ') else 'on fp16 docs'})", flush=True)
        times = {p: [] for p in paths}
        for r in range(args.rounds):
            order = list(paths) if r % 2 == 0 else list(reversed(paths))
            for path in order:
                times[path].append(_time(paths[path][0], args.device))
        fp16 = statistics.median(times["fp16"])
        for path in paths:
            ms = statistics.median(times[path])
            variant = ""
            if not path.startswith("peer "):
                fn_quant = paths[path][1]
                docs = d if fn_quant is None else fn_quant[0]
                variant = explain(q, docs, quantize_query=bool(fn_quant and fn_quant[1])).source
            rows.append({"case": name, "path": path, "ms": ms, "fp16_over_this": fp16 / ms, "max_error": checked[path],
                         "all_ms": times[path], "source": variant})
            print(f"{name:15s} {path:24s} {ms:9.4f} ms   {fp16 / ms:5.2f}x fp16   ({variant})", flush=True)
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "Triton interpreter (CPU): timings mean nothing"
    meta = {"gpu": gpu, "torch": torch.__version__, "triton": triton.__version__,
            "rounds": args.rounds}
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({**meta, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
