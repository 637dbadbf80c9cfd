"""The public scoring entry points: checks, the fast path of repeated calls, gradients
(autograd through ``_grad.Scores``) and, while ``torch.compile`` traces, the custom ops of
``maxsim_forge.ops``; the dispatcher (``_api``) routes and launches."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._inputs import (
    Prepared, concat_pairs, copy_pair_offsets, pack_quantized_pairs, prepare_packed, prepare_padded,
    prepare_pair_batch, prepare_pairs,
)
from .._keys import bucket
from ..quant import QuantizedDocs
from ._api import (
    _check_values, _checked_shapes, _device_guard, _launch_or_defer, _note_checked, _plan_for, _plans, _remember, _run,
)
from ._grad import Scores, needs_grad


def maxsim(
    q: torch.Tensor,
    d: torch.Tensor,
    *,
    q_lengths: torch.Tensor | None = None,
    q_mask: torch.Tensor | None = None,
    d_lengths: torch.Tensor | None = None,
    d_mask: torch.Tensor | None = None,
    precision: str = "tf32",
    validate: bool = True,
    quantize_query: bool = False,
) -> torch.Tensor:
    """MaxSim of ``q`` (``[Lq, dim]`` or ``[Nq, Lq, dim]``) against padded ``d[B, Ld, dim]``.

    Lengths (int ``[Nq]`` / ``[B]``) or boolean masks (``[Nq, Lq]`` / ``[B, Ld]``) mark
    valid tokens on either side. Returns float32 ``[B]`` or ``[Nq, B]``. ``validate``
    checks length values too, which reads them back to the host; it is skipped under
    CUDA graph capture. ``d`` may be :class:`~maxsim_forge.QuantizedDocs` (codes
    dequantized in registers); ``quantize_query=True`` then quantizes the query per token
    to the docs' format too, for int8 or fp8 tensor-core dots.
    """
    if _compiling():  # one opaque op in the traced graph
        _traceable(d, quantize_query)
        return _traced["padded"](q, d, q_lengths, q_mask, d_lengths, d_mask, precision, validate)
    quantized = isinstance(d, QuantizedDocs) or quantize_query is not False
    sig, plan = (None, None) if quantized else _plan_for("padded", precision, q, d, q_lengths, q_mask,
                                                         d_lengths, d_mask)
    values = validate and (q_lengths is not None or d_lengths is not None)  # lengths read back and checked
    if needs_grad(q, d):
        _no_quantized_grad(d)
        shape = None if sig is None or values else _checked_shapes.get(sig)
        if shape is not None:  # shapes, dtypes and devices checked before: not again
            return Scores.apply(q, d, _planned(shape, q_lengths, q_mask, d_lengths, d_mask), _run)

        def build(q_, d_):
            prep = prepare_padded(q_, d_, q_lengths=q_lengths, q_mask=q_mask, d_lengths=d_lengths, d_mask=d_mask,
                                  precision=precision, check_values=_check_values(validate, q_lengths, d_lengths),
                                  quantize_query=quantize_query)
            if sig is not None:
                _note_checked(sig, prep)
            return prep

        return Scores.apply(q, d, build, _run)
    if plan is not None and not values:
        route, squeeze, sizes = plan
        q1, kwargs = _padded_call(squeeze, sizes, q, q_lengths, q_mask, d_lengths, d_mask)
        with _device_guard(q):
            out = _launch_or_defer(route, q1, d, **kwargs)
        if out is not None:
            route.calls += 1
            return out[0] if squeeze else out
        # A specialisation not compiled yet: the checked path compiles it in the background.
    prep = prepare_padded(
        q, d, q_lengths=q_lengths, q_mask=q_mask, d_lengths=d_lengths, d_mask=d_mask,
        precision=precision, check_values=_check_values(validate, q_lengths, d_lengths),
        quantize_query=quantize_query,
    )
    out = _run(prep)
    if plan is None and sig is not None:
        _remember(sig, prep)
    return out


def maxsim_packed(
    q: torch.Tensor,
    d_packed: torch.Tensor,
    cu_seqlens: torch.Tensor,
    *,
    max_doc_len: int | None = None,
    q_lengths: torch.Tensor | None = None,
    q_mask: torch.Tensor | None = None,
    precision: str = "tf32",
    validate: bool = True,
    quantize_query: bool = False,
) -> torch.Tensor:
    """MaxSim against docs packed as ``[total_tokens, dim]`` with ``cu_seqlens[B + 1]``.

    ``max_doc_len``, where known, is at least the longest doc (checked unless
    ``validate=False``): it refines the shape bucket and spares the torch path a
    read-back; kernels read each doc's extent on the device. Returns float32 ``[B]`` or ``[Nq, B]``. ``d_packed`` may be packed
    :class:`~maxsim_forge.QuantizedDocs`, with ``quantize_query`` as in :func:`maxsim`.
    """
    def build(q_, d_):
        return prepare_packed(
            q_, d_, cu_seqlens, max_doc_len=max_doc_len, q_lengths=q_lengths, q_mask=q_mask,
            precision=precision, check_values=_check_values(validate, cu_seqlens, q_lengths),
            quantize_query=quantize_query,
        )

    if _compiling():
        _traceable(d_packed, quantize_query)
        return _traced["packed"](q, d_packed, cu_seqlens, max_doc_len, q_lengths, q_mask, precision, validate)
    if needs_grad(q, d_packed):
        _no_quantized_grad(d_packed)
        return Scores.apply(q, d_packed, build, _run)
    return _run(build(q, d_packed))


def maxsim_pairs(
    queries: Sequence[torch.Tensor],
    docs: Sequence[torch.Tensor],
    *,
    precision: str = "tf32",
    quantize_query: bool = False,
) -> torch.Tensor:
    """Query i against doc i, both ragged ``[L, dim]`` tensors; returns float32 ``[N]``.

    Both sides are packed with one copy each and scored in one launch. The docs may be
    packed :class:`~maxsim_forge.QuantizedDocs` (one per doc, one format), with
    ``quantize_query`` as in :func:`maxsim`.
    """
    if isinstance(queries, Sequence) and not isinstance(queries, torch.Tensor) and len(queries) == 0:
        if isinstance(docs, Sequence) and not isinstance(docs, torch.Tensor) and len(docs) == 0:
            return torch.zeros(0, dtype=torch.float32)
    quantized = isinstance(docs, Sequence) and not isinstance(docs, torch.Tensor) and len(docs) and isinstance(
        docs[0], QuantizedDocs)
    if quantize_query is not False or quantized:
        if quantized and isinstance(queries, Sequence) and needs_grad(*queries):
            _no_quantized_grad(docs[0])  # (float docs with quantize_query: refused as such below)
        return _run(pack_quantized_pairs(queries, docs, precision=precision, quantize_query=quantize_query))
    precision, batch = concat_pairs(queries, docs, precision)
    q_lens, d_lens, q, d = batch
    if needs_grad(q, d):  # both sides concatenated by differentiable ops: the items get their gradients
        return Scores.apply(q, d, lambda q_, d_: prepare_pair_batch(batch._replace(q=q_, d=d_), precision), _run)
    if not q.is_cuda:
        return _run(prepare_pair_batch(batch, precision))
    # The fast path of serving batches: a bucket already routed and warm launches at once.
    nb, lq, ld = len(q_lens), max(q_lens), max(d_lens)
    sig = ("pairs", precision, q.device, q.dtype, q.shape[1], bucket(lq), bucket(nb), bucket(ld))
    plan = _plans.get(sig)
    if plan is not None:
        cu = copy_pair_offsets(q_lens, d_lens, q.device)
        with _device_guard(q):
            out = _launch_or_defer(plan[0], q, d, nq=1, lq=lq, nb=nb, ld=ld, q_cu=cu[0], d_cu=cu[1])
        if out is not None:
            plan[0].calls += 1
            return out
        # A specialisation not compiled yet: the checked path compiles it in the background.
    prep = prepare_pair_batch(batch, precision)
    out = _run(prep)
    if ld > 0:
        _remember(sig, prep)
    return out


def maxsim_pairs_packed(
    q_packed: torch.Tensor,
    q_cu: torch.Tensor,
    d_packed: torch.Tensor,
    d_cu: torch.Tensor,
    *,
    max_q_len: int,
    max_d_len: int = 0,
    precision: str = "tf32",
    validate: bool = True,
    quantize_query: bool = False,
) -> torch.Tensor:
    """Aligned pairs already packed: query i is ``q_packed[q_cu[i]:q_cu[i+1]]``; ``d_packed``
    may be packed :class:`~maxsim_forge.QuantizedDocs`, with ``quantize_query`` as in
    :func:`maxsim`. ``max_q_len`` is at least the longest query (the kernels' grid covers
    that many tokens); ``max_d_len``, 0 where unknown, at least the longest doc. Both are
    checked against the offsets, one read-back, unless ``validate=False``, which trusts
    them: a smaller value then drops tokens, and the backward may read out of bounds."""
    def build(q_, d_):
        return prepare_pairs(
            q_, q_cu, d_, d_cu, max_q_len=max_q_len, max_d_len=max_d_len,
            precision=precision, check_values=_check_values(validate, q_cu, d_cu), quantize_query=quantize_query,
        )

    if _compiling():
        _traceable(d_packed, quantize_query)
        return _traced["pairs_packed"](q_packed, q_cu, d_packed, d_cu, max_q_len, max_d_len, precision, validate)
    if needs_grad(q_packed, d_packed):
        _no_quantized_grad(d_packed)
        return Scores.apply(q_packed, d_packed, build, _run)
    return _run(build(q_packed, d_packed))


def _one_query(q: torch.Tensor, q_lengths, q_mask):
    """A 2-D query as the query set of one (a [1, Lq] mask is taken as it is)."""
    return (q.unsqueeze(0), None if q_lengths is None else q_lengths.reshape(1),
            q_mask.unsqueeze(0) if q_mask is not None and q_mask.dim() == 1 else q_mask)


def _padded_call(squeeze: bool, sizes: dict, q: torch.Tensor, q_lengths, q_mask, d_lengths, d_mask):
    """A padded call whose shapes were checked before: its query as the launch takes it
    and its launch arguments."""
    if squeeze:
        q, q_lengths, q_mask = _one_query(q, q_lengths, q_mask)
    return q, dict(sizes, q_lengths=None if q_lengths is None else q_lengths.contiguous(), q_mask=q_mask,
                   d_lengths=None if d_lengths is None else d_lengths.contiguous(), d_mask=d_mask)


def _planned(shape: tuple, q_lengths, q_mask, d_lengths, d_mask):
    """The checked call ``prepare_padded`` made of these shapes before, for ``q, d``."""
    squeeze, sizes, spec = shape

    def build(q: torch.Tensor, d: torch.Tensor) -> Prepared:
        q1, kwargs = _padded_call(squeeze, sizes, q, q_lengths, q_mask, d_lengths, d_mask)
        return Prepared(spec, q1, d, kwargs, squeeze)

    return build


def score_prepared(prep: Prepared) -> torch.Tensor:
    """Score a checked call through the usual route (what the custom ops run)."""
    return _run(prep)


# The custom ops (maxsim_forge.ops) the entry points call while torch.compile traces them.
_traced: dict[str, object] = {}


_ops_ready = False  # a plain bool: Dynamo reads it as a constant (torch 2.11 cannot trace bool(dict))


def use_ops(padded, packed, pairs_packed) -> None:
    """Called by maxsim_forge.ops once its ops are registered."""
    global _ops_ready
    _traced.update(padded=padded, packed=packed, pairs_packed=pairs_packed)
    _ops_ready = True


def _compiling() -> bool:
    return _ops_ready and torch.compiler.is_compiling()


def _traceable(d, quantize_query) -> None:
    """What torch.compile may trace: float docs (QuantizedDocs is no tensor an op takes)."""
    if isinstance(d, QuantizedDocs) or quantize_query is not False:
        raise ValueError("quantized docs and quantize_query are not traced by torch.compile: call them outside "
                         "the compiled region (torch.compiler.disable)")


def _no_quantized_grad(d) -> None:
    if isinstance(d, QuantizedDocs):
        raise ValueError("gradients through quantized docs are not supported: their codes are integers or fp8; "
                         "score float docs to train, or call under torch.no_grad()")


__all__ = ["maxsim", "maxsim_packed", "maxsim_pairs", "maxsim_pairs_packed", "score_prepared", "use_ops"]
