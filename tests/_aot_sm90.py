"""Compile generated variants ahead of time for Hopper (sm_90): run in a process of its
own, without Triton's interpreter (which patches triton.language while it runs).

Input on stdin: a JSON list of [spec dict, config dict]. Output on stdout: one JSON
object per variant: shared memory, whether the PTX has warp-group MMA and asynchronous
copies, and the error of a variant that does not compile.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from maxsim_forge.codegen import (
    KernelConfig, KernelSpec, Variant, WinnersConfig, grads_meta, load_grads, load_source, load_winners, render, validate,
    winners_meta,
)
from maxsim_forge.codegen._quantize import quantize_meta, render_quantize

_ELEMENT = {"fp16": "*fp16", "bf16": "*bf16", "fp32": "*fp32", "int8": "*i8", "fp8": "*fp8e4nv"}
# Launch-time values: unit strides along features and outputs, as the launcher passes
# them (Triton specialises an integer of value 1), other strides and pointers aligned.
_UNIT = ("stride_qd", "stride_dd", "stride_ob", "stride_dmt", "stride_qmt", "stride_pb", "stride_gqd", "stride_gdd",
         "stride_im", "stride_wm", "stride_rm", "stride_xk", "stride_ck", "stride_s")


def _compile(launcher, spec: KernelSpec):
    kernel = launcher.kernel
    meta = dict(launcher.meta)
    options = {"num_warps": meta.pop("num_warps"), "num_stages": meta.pop("num_stages", 3)}
    constexprs, signature, attrs = dict(meta), {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name in _UNIT:
            constexprs[name] = 1
        if name.endswith("_ptr") or (name.startswith("stride_") and name not in constexprs):
            attrs[(i,)] = [["tt.divisibility", 16]]
        if name in constexprs:
            signature[name] = "constexpr"
        elif name == "q_ptr":
            signature[name] = _ELEMENT[spec.query_codes or spec.dtype]
        elif name in ("d_ptr", "dq_ptr", "dd_ptr"):
            signature[name] = _ELEMENT[spec.doc_codes or spec.dtype]
        elif name == "idx_ptr":
            signature[name] = "*i32"
        elif name == "x_ptr":  # the quantize kernel's tokens
            signature[name] = _ELEMENT[spec.dtype]
        elif name == "codes_ptr":
            signature[name] = "*i8"
        elif name == "scale_ptr":
            signature[name] = "*fp32"
        elif name == "row_ptr":  # torch.sort's indices
            signature[name] = "*i64"
        elif name in ("out_ptr", "part_ptr", "d_scale_ptr", "q_scale_ptr", "g_ptr", "val_ptr"):
            signature[name] = "*fp32"
        elif name.endswith("mask_ptr"):
            signature[name] = "*i1"
        elif name.endswith("_ptr"):
            signature[name] = "*i32"
        else:
            signature[name] = "i32"
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)


def main() -> None:
    out = []
    with tempfile.TemporaryDirectory() as folder:
        os.environ["MAXSIM_FORGE_CACHE"] = folder
        for spec_d, cfg_d in json.load(sys.stdin):
            spec = KernelSpec(**spec_d)
            try:
                if "winners" in cfg_d:  # the backward's winners kernel
                    wcfg = WinnersConfig(**cfg_d["winners"])
                    launcher = type("L", (), {"kernel": load_winners(spec, wcfg), "meta": winners_meta(spec, wcfg)})
                    compiled = _compile(launcher, spec)
                    ptx = compiled.asm["ptx"]
                    out.append({"shared": compiled.metadata.shared, "wgmma": "wgmma.mma_async" in ptx,
                                "cp_async": "cp.async" in ptx, "mma": [], "error": None})
                    continue
                if "quantize" in cfg_d:  # the int8 quantize kernel of a query's tokens
                    dim = cfg_d["quantize"]
                    launcher = type("L", (), {"kernel": load_source(render_quantize(dim))._quantize_rows_kernel,
                                              "meta": quantize_meta(dim)})
                    ptx = _compile(launcher, spec).asm["ptx"]
                    divs = sorted({line.split()[0] for line in ptx.splitlines() if line.strip().startswith("div.")})
                    upper = ptx.upper()  # the rounding's +1.5 * 2**23 and -1.5 * 2**23, both kept
                    out.append({"shared": 0, "wgmma": False, "cp_async": False, "mma": [], "divs": divs,
                                "round_adds": [upper.count("0F4B400000"), upper.count("0FCB400000")], "error": None})
                    continue
                if "grads" in cfg_d:  # the backward's gradient kernels, at these query and doc lengths
                    module = load_grads(spec)
                    shared, wgmma = 0, False
                    for name, meta in zip(("_maxsim_dq_kernel", "_maxsim_dd_kernel"), grads_meta(spec, **cfg_d["grads"])):
                        launcher = type("L", (), {"kernel": getattr(module, name), "meta": meta})
                        compiled = _compile(launcher, spec)
                        shared = max(shared, compiled.metadata.shared)
                        wgmma = wgmma or "wgmma.mma_async" in compiled.asm["ptx"]
                    out.append({"shared": shared, "wgmma": wgmma, "cp_async": False, "mma": [], "error": None})
                    continue
                cfg = KernelConfig.from_dict(cfg_d)
                validate(spec, cfg)
                variant = Variant(spec, cfg, load_source(render(spec, cfg, interpret=False)))
                compiled = _compile(variant.fwd, spec)
                if variant.reduce is not None:
                    _compile(variant.reduce, spec)
                ptx = compiled.asm["ptx"]
                mma = [line.split()[0] for line in ptx.splitlines() if "mma" in line and not line.strip().startswith("//")]
                out.append({"shared": compiled.metadata.shared, "wgmma": "wgmma.mma_async" in ptx,
                            "cp_async": "cp.async" in ptx, "mma": sorted(set(mma))[:8], "error": None})
            except Exception as exc:  # reported per variant; the test names it
                out.append({"error": f"{type(exc).__name__}: {str(exc)[:2000]}"})
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
