"""How a generated variant is launched: its output, grids, program counts and kernel
arguments, in plain Python driven by the spec and the config.

The kernels (templates/) take sizes, strides and pointers; everything the host works out
for them lives here, once. A change to the arithmetic below changes how every tuned
config runs: bump ``LAUNCH_REVISION`` with it, which enters every kernel hash and so
marks the rows timed before as stale.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ._config import CODE_DTYPES, KernelConfig, KernelSpec, num_k_chunks, query_programs, torch_dtype

LAUNCH_REVISION = 1
# Rows per step of the split-doc reduction kernel, and its warps: it reads a few KB.
REDUCE_BLOCK_R = 64
REDUCE_WARPS = 4
# Programs per SM of the persistent grid (q_mode "persist").
PERSIST_PER_SM = 2
# The interpreter runs on the CPU: a small GPU's worth of persistent programs there.
_INTERPRETER_SMS = 4


def launch_meta(cfg: KernelConfig) -> dict:
    """Launch parameters a config fixes besides its tiles: warps, stages, the reduce kernel's."""
    meta = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    if cfg.split_d > 1:
        meta.update(reduce_block_r=REDUCE_BLOCK_R, reduce_warps=REDUCE_WARPS)
    if cfg.q_mode == "persist":
        meta.update(persist_per_sm=PERSIST_PER_SM)
    return meta


def fwd_constexprs(spec: KernelSpec, cfg: KernelConfig) -> dict:
    """The main kernel's compile-time arguments, in its parameter order."""
    return {"DIM": spec.dim, "BLOCK_Q": cfg.block_q, "BLOCK_D": cfg.block_d, "BLOCK_K": cfg.block_k,
            "NUM_K": num_k_chunks(spec, cfg), "SPLIT_D": cfg.split_d}


def reduce_constexprs(cfg: KernelConfig) -> dict:
    return {"SPLIT_D": cfg.split_d, "BLOCK_R": REDUCE_BLOCK_R}


def zeroed_output(cfg: KernelConfig, nq: int, lq: int) -> bool:
    """Whether the output must start at zero: where several programs add into one score
    with atomics. ``grid`` and ``persist`` always add; straight-line tiles and folded
    rows store a score that one tile holds and add where it spans several; a doc split
    (whose reduce kernel writes every score) and ``loop`` store."""
    if cfg.split_d > 1:
        return False
    if cfg.q_mode in ("grid", "persist"):
        return True
    if cfg.q_mode == "fold":
        return -(-(nq * lq) // cfg.block_q) > 1
    if cfg.q_mode == "tile":
        return -(-lq // cfg.block_q) > 1
    return False


@functools.lru_cache(maxsize=None)
def sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else _INTERPRETER_SMS


def persist_lanes(nb: int, q_progs: int, device: torch.device) -> int:
    """Programs that share each query tile of the persistent grid: about
    ``PERSIST_PER_SM`` programs per SM in all, at most one per doc."""
    return max(1, min(nb, sm_count(device) * PERSIST_PER_SM // q_progs))


@dataclass(frozen=True)
class Step:
    """One kernel launch of a plan: which kernel ("fwd" or "reduce"), its grid, its arguments."""

    kernel: str
    grid: tuple[int, ...]
    args: tuple


def _strides(t, n):
    return tuple(t.stride()) if t is not None else (0,) * n


def check_call(spec: KernelSpec, name: str, q: torch.Tensor, d: torch.Tensor) -> None:
    want_q = CODE_DTYPES[spec.query_codes] if spec.query_codes else torch_dtype(spec.dtype)
    want_d = CODE_DTYPES[spec.doc_codes] if spec.doc_codes else torch_dtype(spec.dtype)
    if q.dtype != want_q or d.dtype != want_d:
        takes = str(want_q) if want_q == want_d else f"q {want_q}, d {want_d}"
        raise TypeError(f"variant {name} takes {takes}; got q {q.dtype}, d {d.dtype}")
    if q.shape[-1] != spec.dim or d.shape[-1] != spec.dim:
        raise ValueError(f"variant {name} takes dim {spec.dim}; got q {tuple(q.shape)}, d {tuple(d.shape)}")


def output(spec: KernelSpec, cfg: KernelConfig, q: torch.Tensor, *, nq: int, lq: int, nb: int,
           out: torch.Tensor | None) -> torch.Tensor:
    """The float32 result, allocated or checked, zeroed where atomics add into it."""
    shape = (nb,) if spec.layout == "pairs" else (nq, nb)
    zero = zeroed_output(cfg, nq, lq)
    if out is None:
        return (torch.zeros if zero else torch.empty)(shape, dtype=torch.float32, device=q.device)
    if tuple(out.shape) != shape or out.dtype != torch.float32 or out.device != q.device:
        raise ValueError(
            f"out must be float32 of shape {shape} on {q.device}; "
            f"got {out.dtype} {tuple(out.shape)} on {out.device}"
        )
    return out.zero_() if zero else out


def _scale_args(spec: KernelSpec, d_scales, q_scales) -> tuple[tuple, tuple]:
    """The scale tensors of quantized docs (and query) and their (row, token) strides;
    nothing for float docs, whose kernels take no scales."""
    if spec.codes == "none":
        return (), ()
    if d_scales is None or (spec.query_codes and q_scales is None):
        raise ValueError(f"codes={spec.codes!r} needs the docs' scales" + (" and the query's" if spec.query_codes else ""))
    flat = spec.layout in ("packed", "pairs")
    ds = (0, d_scales.stride(0)) if flat else tuple(d_scales.stride())
    if q_scales is None:
        return (d_scales, d_scales), (*ds, 0, 0)
    qs = (0, q_scales.stride(0)) if spec.layout == "pairs" else tuple(q_scales.stride())
    return (d_scales, q_scales), (*ds, *qs)


def plan(spec: KernelSpec, cfg: KernelConfig, q, d, *, nq, lq, nb, ld, q_cu=None, d_cu=None,
         q_lengths=None, q_mask=None, d_lengths=None, d_mask=None, d_scales=None, q_scales=None, out=None):
    """The output and the launches that fill it (none for an empty output). Quantized
    docs pass their per-token float32 scales (``[B, Ld]``, or ``[T]`` packed), and a
    quantized query its own (``[Nq, Lq]``, or ``[Tq]`` for pairs)."""
    pairs = spec.layout == "pairs"
    out = output(spec, cfg, q, nq=nq, lq=lq, nb=nb, out=out)
    if out.numel() == 0 or lq == 0:
        return out.zero_(), ()
    out_strides = (0, out.stride(0)) if pairs else tuple(out.stride())
    q_progs = query_programs(spec.layout, cfg, nq, lq)
    if cfg.split_d > 1:
        rows = (q.shape[0], 1) if pairs else (nq * lq, nb)
        part = torch.empty((cfg.split_d, *rows), dtype=torch.float32, device=q.device)
        part_strides = (part.stride(0), part.stride(1), 0 if pairs else part.stride(2))
    else:
        part, part_strides = out, (0, 0, 0)
    q_strides = (0, q.stride(0), q.stride(1)) if pairs else tuple(q.stride())
    d_strides = (0, d.stride(0), d.stride(1)) if spec.layout in ("packed", "pairs") else tuple(d.stride())
    if cfg.q_mode == "persist":
        lanes = persist_lanes(nb, q_progs, q.device)
        sizes, grid = (nq, lq, ld, q_progs, nb, lanes), (q_progs * lanes,)
    else:
        sizes, grid = (nq, lq, ld, q_progs), (q_progs * cfg.split_d * nb,)
    extent = tuple(t if t is not None else d for t in (q_cu, d_cu, q_lengths, q_mask, d_lengths, d_mask))
    scales, scale_strides = _scale_args(spec, d_scales, q_scales)
    fwd_args = (
        q, d, out, part, *extent, *scales, *sizes,
        *q_strides, *d_strides, *_strides(q_mask, 2), *_strides(d_mask, 2), *out_strides, *part_strides,
        *scale_strides,
    )
    steps = [Step("fwd", grid, fwd_args)]
    if cfg.split_d > 1:
        reduce_args = (part, out, extent[0], extent[2], extent[3], nb, lq,
                       *part_strides, *out_strides, *_strides(q_mask, 2))
        steps.append(Step("reduce", (out.numel(),), reduce_args))
    return out, tuple(steps)
