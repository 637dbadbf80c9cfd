"""The scoring entry points as ``torch.library`` custom ops, with fake (shape-only)
implementations and autograd, so ``torch.compile(fullgraph=True)`` of code that calls
them traces no Python of ours: each call is one opaque op in the graph, and the runtime's
routing, its database lookups and its background compiles run inside the op, at run
time, outside the traced graph.

``maxsim_forge.maxsim`` (and ``maxsim_packed``, ``maxsim_pairs_packed``) call these ops by
themselves while ``torch.compile`` traces (``torch.compiler.is_compiling()``); they can
also be called directly as ``torch.ops.maxsim_forge.maxsim(...)``. Each has a backward op
(``maxsim_backward`` and so on) that autograd calls, itself traceable.

Not through these ops: quantized docs (``QuantizedDocs`` is no tensor) and pairs given as
Python lists (their packing is host work); call those outside the compiled region.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.library import custom_op

from ._inputs import prepare_packed, prepare_padded, prepare_pairs
from .runtime import backward_scores, score_prepared, use_ops

_NS = "maxsim_forge"


def _fresh(out: Tensor) -> Tensor:
    """An op's output may not be a view (the squeezed row of a one-query call)."""
    return out.clone() if out._base is not None else out


def _checks(validate: bool, t: Tensor) -> bool:
    """Value checks (lengths, offsets) as the entry points make them: asked for, and not
    under CUDA graph capture."""
    return validate and not (t.is_cuda and torch.cuda.is_current_stream_capturing())


def _out_dtype(q: Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _run(prep):
    with torch.no_grad():
        return _fresh(score_prepared(prep))


def _grads(prep, grad: Tensor, q: Tensor, d: Tensor, need_q: bool, need_d: bool) -> tuple[Tensor, Tensor]:
    """The gradients asked for; a side not asked for gets zeros (an op returns tensors)."""
    g = grad.unsqueeze(0) if prep.squeeze else grad
    with torch.no_grad():
        dq, dd = backward_scores(prep, g.contiguous(), need_q=need_q, need_d=need_d)
    dq = torch.zeros(q.shape, dtype=q.dtype, device=q.device) if dq is None else dq.reshape(q.shape)
    dd = torch.zeros(d.shape, dtype=d.dtype, device=d.device) if dd is None else dd.reshape(d.shape)
    return dq, dd


# ---- padded (and all pairs)
@custom_op(f"{_NS}::maxsim", mutates_args=())
def maxsim(q: Tensor, d: Tensor, q_lengths: Tensor | None, q_mask: Tensor | None, d_lengths: Tensor | None,
           d_mask: Tensor | None, precision: str, validate: bool = True) -> Tensor:
    return _run(prepare_padded(q, d, q_lengths=q_lengths, q_mask=q_mask, d_lengths=d_lengths, d_mask=d_mask,
                               precision=precision, check_values=_checks(validate, q)))


@maxsim.register_fake
def _(q, d, q_lengths, q_mask, d_lengths, d_mask, precision, validate=True):
    shape = (d.shape[0],) if q.dim() == 2 else (q.shape[0], d.shape[0])
    return q.new_empty(shape, dtype=_out_dtype(q))


@custom_op(f"{_NS}::maxsim_backward", mutates_args=())
def maxsim_backward(grad: Tensor, q: Tensor, d: Tensor, q_lengths: Tensor | None, q_mask: Tensor | None,
                    d_lengths: Tensor | None, d_mask: Tensor | None, precision: str, need_q: bool,
                    need_d: bool) -> tuple[Tensor, Tensor]:
    prep = prepare_padded(q, d, q_lengths=q_lengths, q_mask=q_mask, d_lengths=d_lengths, d_mask=d_mask,
                          precision=precision, check_values=False)
    return _grads(prep, grad, q, d, need_q, need_d)


@maxsim_backward.register_fake
def _(grad, q, d, q_lengths, q_mask, d_lengths, d_mask, precision, need_q, need_d):
    return q.new_empty(q.shape), d.new_empty(d.shape)


def _maxsim_setup(ctx, inputs, output):
    q, d, q_lengths, q_mask, d_lengths, d_mask, precision, _ = inputs
    ctx.save_for_backward(q, d, q_lengths, q_mask, d_lengths, d_mask)
    ctx.precision = precision


def _maxsim_grad(ctx, grad):
    q, d, q_lengths, q_mask, d_lengths, d_mask = ctx.saved_tensors
    dq, dd = maxsim_backward(grad, q, d, q_lengths, q_mask, d_lengths, d_mask, ctx.precision,
                             ctx.needs_input_grad[0], ctx.needs_input_grad[1])
    return dq, dd, None, None, None, None, None, None


maxsim.register_autograd(_maxsim_grad, setup_context=_maxsim_setup)


# ---- packed docs
@custom_op(f"{_NS}::maxsim_packed", mutates_args=())
def maxsim_packed(q: Tensor, d_packed: Tensor, cu_seqlens: Tensor, max_doc_len: int | None, q_lengths: Tensor | None,
                  q_mask: Tensor | None, precision: str, validate: bool = True) -> Tensor:
    return _run(prepare_packed(q, d_packed, cu_seqlens, max_doc_len=max_doc_len, q_lengths=q_lengths, q_mask=q_mask,
                               precision=precision, check_values=_checks(validate, q)))


@maxsim_packed.register_fake
def _(q, d_packed, cu_seqlens, max_doc_len, q_lengths, q_mask, precision, validate=True):
    nb = cu_seqlens.shape[0] - 1
    shape = (nb,) if q.dim() == 2 else (q.shape[0], nb)
    return q.new_empty(shape, dtype=_out_dtype(q))


@custom_op(f"{_NS}::maxsim_packed_backward", mutates_args=())
def maxsim_packed_backward(grad: Tensor, q: Tensor, d_packed: Tensor, cu_seqlens: Tensor, max_doc_len: int | None,
                           q_lengths: Tensor | None, q_mask: Tensor | None, precision: str, need_q: bool,
                           need_d: bool) -> tuple[Tensor, Tensor]:
    prep = prepare_packed(q, d_packed, cu_seqlens, max_doc_len=max_doc_len, q_lengths=q_lengths, q_mask=q_mask,
                          precision=precision, check_values=False)
    return _grads(prep, grad, q, d_packed, need_q, need_d)


@maxsim_packed_backward.register_fake
def _(grad, q, d_packed, cu_seqlens, max_doc_len, q_lengths, q_mask, precision, need_q, need_d):
    return q.new_empty(q.shape), d_packed.new_empty(d_packed.shape)


def _packed_setup(ctx, inputs, output):
    q, d_packed, cu_seqlens, max_doc_len, q_lengths, q_mask, precision, _ = inputs
    ctx.save_for_backward(q, d_packed, cu_seqlens, q_lengths, q_mask)
    ctx.max_doc_len, ctx.precision = max_doc_len, precision


def _packed_grad(ctx, grad):
    q, d_packed, cu_seqlens, q_lengths, q_mask = ctx.saved_tensors
    dq, dd = maxsim_packed_backward(grad, q, d_packed, cu_seqlens, ctx.max_doc_len, q_lengths, q_mask, ctx.precision,
                                    ctx.needs_input_grad[0], ctx.needs_input_grad[1])
    return dq, dd, None, None, None, None, None, None


maxsim_packed.register_autograd(_packed_grad, setup_context=_packed_setup)


# ---- aligned pairs, both sides packed
@custom_op(f"{_NS}::maxsim_pairs_packed", mutates_args=())
def maxsim_pairs_packed(q_packed: Tensor, q_cu: Tensor, d_packed: Tensor, d_cu: Tensor, max_q_len: int,
                        max_d_len: int, precision: str, validate: bool = True) -> Tensor:
    return _run(prepare_pairs(q_packed, q_cu, d_packed, d_cu, max_q_len=max_q_len, max_d_len=max_d_len,
                              precision=precision, check_values=_checks(validate, q_packed)))


@maxsim_pairs_packed.register_fake
def _(q_packed, q_cu, d_packed, d_cu, max_q_len, max_d_len, precision, validate=True):
    return q_packed.new_empty((q_cu.shape[0] - 1,), dtype=_out_dtype(q_packed))


@custom_op(f"{_NS}::maxsim_pairs_packed_backward", mutates_args=())
def maxsim_pairs_packed_backward(grad: Tensor, q_packed: Tensor, q_cu: Tensor, d_packed: Tensor, d_cu: Tensor,
                                 max_q_len: int, max_d_len: int, precision: str, need_q: bool,
                                 need_d: bool) -> tuple[Tensor, Tensor]:
    prep = prepare_pairs(q_packed, q_cu, d_packed, d_cu, max_q_len=max_q_len, max_d_len=max_d_len,
                         precision=precision, check_values=False)
    return _grads(prep, grad, q_packed, d_packed, need_q, need_d)


@maxsim_pairs_packed_backward.register_fake
def _(grad, q_packed, q_cu, d_packed, d_cu, max_q_len, max_d_len, precision, need_q, need_d):
    return q_packed.new_empty(q_packed.shape), d_packed.new_empty(d_packed.shape)


def _pairs_setup(ctx, inputs, output):
    q_packed, q_cu, d_packed, d_cu, max_q_len, max_d_len, precision, _ = inputs
    ctx.save_for_backward(q_packed, q_cu, d_packed, d_cu)
    ctx.sizes, ctx.precision = (max_q_len, max_d_len), precision


def _pairs_grad(ctx, grad):
    q_packed, q_cu, d_packed, d_cu = ctx.saved_tensors
    dq, dd = maxsim_pairs_packed_backward(grad, q_packed, q_cu, d_packed, d_cu, *ctx.sizes, ctx.precision,
                                          ctx.needs_input_grad[0], ctx.needs_input_grad[2])
    return dq, None, dd, None, None, None, None, None


maxsim_pairs_packed.register_autograd(_pairs_grad, setup_context=_pairs_setup)

OPS = (maxsim, maxsim_packed, maxsim_pairs_packed)
use_ops(maxsim, maxsim_packed, maxsim_pairs_packed)  # what the entry points call while torch.compile traces
BACKWARD_OPS = (maxsim_backward, maxsim_packed_backward, maxsim_pairs_packed_backward)

__all__ = ["BACKWARD_OPS", "OPS", "maxsim", "maxsim_backward", "maxsim_packed", "maxsim_packed_backward",
           "maxsim_pairs_packed", "maxsim_pairs_packed_backward"]
