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

from maxsim_forge.codegen import KernelConfig, KernelSpec, Variant, load_source, render, validate

_ELEMENT = {"fp16": "*fp16", "bf16": "*bf16", "fp32": "*fp32"}
# Launch-time values: unit strides along features and outputs, as the launcher passes
# them (Triton specialises an integer of value 1), other strides and pointers aligned.
_UNIT = ("stride_qd", "stride_dd", "stride_ob", "stride_dmt", "stride_qmt", "stride_pb")


def _compile(launcher, dtype: str):
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
        elif name in ("q_ptr", "d_ptr"):
            signature[name] = _ELEMENT[dtype]
        elif name in ("out_ptr", "part_ptr"):
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
            spec, cfg = KernelSpec(**spec_d), KernelConfig.from_dict(cfg_d)
            try:
                validate(spec, cfg)
                variant = Variant(spec, cfg, load_source(render(spec, cfg, interpret=False)))
                compiled = _compile(variant.fwd, spec.dtype)
                if variant.reduce is not None:
                    _compile(variant.reduce, spec.dtype)
                ptx = compiled.asm["ptx"]
                out.append({"shared": compiled.metadata.shared, "wgmma": "wgmma.mma_async" in ptx,
                            "cp_async": "cp.async" in ptx, "error": None})
            except Exception as exc:  # reported per variant; the test names it
                out.append({"error": f"{type(exc).__name__}: {str(exc)[:2000]}"})
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
