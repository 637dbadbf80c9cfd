"""The peers' quantized scoring, for ``benchmarks/quant_check.py --peers``: flash-maxsim 0.3.0's
int8 documents (fp16 query, and int8 x int8) and late-interaction-kernels 0.4.5's fp8 e4m3
(query and docs in fp8, its only fused path), each with its own quantizer, applied once
before timing. Both are padded-only and take one query ``[Lq, dim]`` here."""

from __future__ import annotations

import os

import torch


def peer_calls(q: torch.Tensor, d: torch.Tensor) -> dict:
    """name -> (zero-argument callable returning float32 [B], None) for each installed peer."""
    out = {}
    try:
        import flash_maxsim as fm
    except ImportError:
        fm = None
    if fm is not None:
        d_int8, d_scales = fm.quantize_int8_symmetric(d)
        q_int8, q_scales = fm.quantize_query_int8(q)
        out["peer flash-maxsim int8"] = (lambda: fm.flash_maxsim_int8_symmetric(q, d_int8, d_scales), None)
        out["peer flash-maxsim int8x8"] = (
            lambda: fm.flash_maxsim_int8x8(q, d_int8, d_scales, Q_int8=q_int8, q_scales=q_scales), None)
    os.environ.setdefault("LIK_SUPPRESS_NORM_WARN", "1")
    try:
        from late_interaction_kernels.fp8 import maxsim_inference_fp8, quantize_fp8_per_token
    except ImportError:
        maxsim_inference_fp8 = None
    if maxsim_inference_fp8 is not None:
        d8, s_d = quantize_fp8_per_token(d)
        q8, s_q = quantize_fp8_per_token(q)
        out["peer lik fp8xfp8"] = (lambda: maxsim_inference_fp8(q8, d8, scale_Q=s_q, scale_D=s_d), None)
    return out
