"""Input checks and normalisation shared by every entry point.

Each ``prepare_*`` function, and :func:`pack_pairs` for pairs given as lists, checks
what a caller passed, raises a ``TypeError`` or ``ValueError`` that names the argument,
what was given and what is accepted, and returns a :class:`Prepared` call: the kernel
spec plus the keyword arguments of a generated module's ``launch``. Checks of *values* (lengths in range, cu_seqlens
monotone) read the data back to the host; callers skip them under CUDA graph capture.

The checks themselves are in ``_checks.py``; the packing of pairs given as lists (both
sides concatenated, their offsets on the device) in ``_pairs.py``, whose ``PairBatch``,
``concat_pairs`` and ``copy_pair_offsets`` the runtime reads from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ._checks import (
    check_cu_seqlens, check_device, check_float_dtype, check_lengths, check_mask, check_precision, check_rank,
    check_same, check_tensor,
)
from ._keys import DTYPE_NAMES, TORCH_ONLY_DTYPES
from ._pairs import PairBatch, concat_pairs, copy_pair_offsets
from .codegen import KernelSpec
from .quant import SPEC_CODES, QuantizedDocs, quantize_rows


@dataclass
class Prepared:
    """A checked call: what the kernel is specialised on and what its launcher takes."""

    spec: KernelSpec
    q: torch.Tensor
    d: torch.Tensor
    launch_kwargs: dict = field(default_factory=dict)
    squeeze: bool = False  # a 2-D query: the [1, B] result is returned as [B]

    @property
    def sizes(self) -> dict:
        k = self.launch_kwargs
        return {"nq": k["nq"], "lq": k["lq"], "nb": k["nb"], "ld": k["ld"]}


def _spec(layout: str, q: torch.Tensor, precision: str, q_kind: str, d_kind: str, codes: str = "none") -> KernelSpec:
    return KernelSpec(
        layout=layout,
        dtype={**DTYPE_NAMES, **TORCH_ONLY_DTYPES}[q.dtype],
        dim=int(q.shape[-1]),
        precision=precision,
        q_mask=q_kind,
        d_mask=d_kind,
        codes=codes,
    )


def _doc_side(name: str, q_name: str, q: torch.Tensor, d, rank: int, what: str, quantize_query: bool):
    """(doc tensor or codes, their scales or None, the spec's codes) of docs given as a
    float tensor or as :class:`QuantizedDocs`; checked against the query."""
    if not isinstance(quantize_query, bool):
        raise TypeError(f"quantize_query must be True or False, got {quantize_query!r}")
    if isinstance(d, QuantizedDocs):
        check_rank(name, d.codes, (rank,), what)
        check_device(name, d.codes, q, q_name)
        if d.shape[-1] != q.shape[-1]:
            raise ValueError(f"{name} has {d.shape[-1]} features but {q_name} has {q.shape[-1]}; both must match")
        codes = SPEC_CODES[d.format]
        return d.codes, d.scales, codes + (f"x{codes}" if quantize_query else "")
    d = check_tensor(name, d)
    if quantize_query:
        raise ValueError(f"quantize_query=True quantizes the query to the docs' format: {name} must be "
                         "QuantizedDocs (maxsim_forge.quantize), got a tensor")
    check_rank(name, d, (rank,), what)
    check_float_dtype(name, d)
    check_same(q_name, q, name, d)
    return d, None, "none"


def _query_codes(q: torch.Tensor, spec: KernelSpec) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The query as the kernel takes it: quantized per token where the spec says so."""
    if not spec.query_codes:
        return q, None
    return quantize_rows(q, "int8" if spec.query_codes == "int8" else "fp8_e4m3")


def _query_side(q, q_lengths, q_mask, check: bool):
    """Shared queries: [Lq, dim] or [Nq, Lq, dim] with optional lengths or mask."""
    q = check_tensor("q", q)
    check_rank("q", q, (2, 3), "[Lq, dim] or [Nq, Lq, dim]")
    check_float_dtype("q", q)
    squeeze = q.dim() == 2
    if squeeze:
        q = q.unsqueeze(0)
        if isinstance(q_mask, torch.Tensor) and q_mask.dim() == 1:
            q_mask = q_mask.unsqueeze(0)
        if isinstance(q_lengths, torch.Tensor) and q_lengths.dim() == 0:
            q_lengths = q_lengths.reshape(1)
    q_lengths, q_mask, kind = _valid_side("q", q, q_lengths, q_mask, check)
    return q, q_lengths, q_mask, kind, squeeze


def _valid_side(name: str, x: torch.Tensor, lengths, mask, check: bool):
    """(lengths, mask, kind) of the valid tokens of ``x[count, length, ...]``: lengths
    ``[count]`` or a boolean mask ``[count, length]``, at most one of them."""
    count, length = int(x.shape[0]), int(x.shape[1])
    if lengths is not None and mask is not None:
        raise ValueError(f"pass {name}_lengths or {name}_mask, not both")
    if lengths is not None:
        return check_lengths(f"{name}_lengths", lengths, count, length, x, name, check), None, "lengths"
    if mask is not None:
        return None, check_mask(f"{name}_mask", mask, (count, length), x, name), "mask"
    return None, None, "none"


def prepare_padded(
    q,
    d,
    *,
    q_lengths=None,
    q_mask=None,
    d_lengths=None,
    d_mask=None,
    precision: str = "tf32",
    check_values: bool = True,
    quantize_query: bool = False,
) -> Prepared:
    """Padded docs ``d[B, Ld, dim]`` (a tensor or :class:`QuantizedDocs`) against one query
    ``[Lq, dim]`` or ``[Nq, Lq, dim]``."""
    q, q_lengths, q_mask, q_kind, squeeze = _query_side(q, q_lengths, q_mask, check_values)
    d, d_scales, codes = _doc_side("d", "q", q, d, 3, "[B, Ld, dim]", quantize_query)
    precision = check_precision(precision)
    nb, ld = int(d.shape[0]), int(d.shape[1])
    d_lengths, d_mask, d_kind = _valid_side("d", d, d_lengths, d_mask, check_values)
    layout = "padded" if q.shape[0] == 1 else "allpairs"
    spec = _spec(layout, q, precision, q_kind, d_kind, codes)
    q, q_scales = _query_codes(q, spec)
    return Prepared(
        spec=spec,
        q=q,
        d=d,
        launch_kwargs=dict(
            nq=int(q.shape[0]), lq=int(q.shape[1]), nb=nb, ld=ld,
            q_lengths=q_lengths, q_mask=q_mask, d_lengths=d_lengths, d_mask=d_mask,
            **_scales(d_scales, q_scales),
        ),
        squeeze=squeeze,
    )


def _scales(d_scales, q_scales) -> dict:
    """The launch arguments of quantized docs (and query); none for float docs."""
    if d_scales is None:
        return {}
    return {"d_scales": d_scales} if q_scales is None else {"d_scales": d_scales, "q_scales": q_scales}


def prepare_packed(
    q,
    d_packed,
    cu_seqlens,
    *,
    max_doc_len: int | None = None,
    q_lengths=None,
    q_mask=None,
    precision: str = "tf32",
    check_values: bool = True,
    quantize_query: bool = False,
) -> Prepared:
    """Docs packed as ``[total_tokens, dim]`` (a tensor or :class:`QuantizedDocs`) with
    ``cu_seqlens[B + 1]``.

    ``max_doc_len``, where the caller knows it, is at least the longest doc (checked with
    the values): it refines the bucket and spares the torch path a read-back of the
    longest; the kernels read each doc's extent from ``cu_seqlens`` on the device.
    """
    q, q_lengths, q_mask, q_kind, squeeze = _query_side(q, q_lengths, q_mask, check_values)
    d, d_scales, codes = _doc_side("d_packed", "q", q, d_packed, 2, "[total_tokens, dim]", quantize_query)
    precision = check_precision(precision)
    if max_doc_len is not None and (not isinstance(max_doc_len, int) or isinstance(max_doc_len, bool)
                                    or max_doc_len < 0):
        raise ValueError(f"max_doc_len must be a non-negative int or None, got {max_doc_len!r}")
    # The torch path pads docs to max_doc_len where it is given: a longer doc would lose tokens.
    cu = check_cu_seqlens("cu_seqlens", cu_seqlens, int(d.shape[0]), d, "d_packed", check_values,
                          ("max_doc_len", max_doc_len) if max_doc_len else None)
    spec = _spec("packed", q, precision, q_kind, "none", codes)
    q, q_scales = _query_codes(q, spec)
    return Prepared(
        spec=spec,
        q=q,
        d=d,
        launch_kwargs=dict(
            nq=int(q.shape[0]), lq=int(q.shape[1]), nb=int(cu.numel()) - 1,
            ld=max_doc_len or 0, d_cu=cu, q_lengths=q_lengths, q_mask=q_mask, **_scales(d_scales, q_scales),
        ),
        squeeze=squeeze,
    )


def prepare_pairs(
    q_packed,
    q_cu,
    d_packed,
    d_cu,
    *,
    max_q_len: int,
    max_d_len: int = 0,
    precision: str = "tf32",
    check_values: bool = True,
    quantize_query: bool = False,
) -> Prepared:
    """Aligned pairs, both sides packed: query i is ``q_packed[q_cu[i]:q_cu[i+1]]``; the
    docs a tensor or packed :class:`QuantizedDocs`."""
    q = check_tensor("q_packed", q_packed)
    check_rank("q_packed", q, (2,), "[total_query_tokens, dim]")
    check_float_dtype("q_packed", q)
    d, d_scales, codes = _doc_side("d_packed", "q_packed", q, d_packed, 2, "[total_doc_tokens, dim]", quantize_query)
    precision = check_precision(precision)
    for name, value in (("max_q_len", max_q_len), ("max_d_len", max_d_len)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    # The kernels' grid covers max_q_len query tokens: a longer query would lose tokens.
    q_cu = check_cu_seqlens("q_cu", q_cu, int(q.shape[0]), q, "q_packed", check_values, ("max_q_len", max_q_len))
    d_cu = check_cu_seqlens("d_cu", d_cu, int(d.shape[0]), d, "d_packed", check_values,
                            ("max_d_len", max_d_len) if max_d_len else None)
    if q_cu.numel() != d_cu.numel():
        raise ValueError(
            f"q_cu describes {q_cu.numel() - 1} queries but d_cu {d_cu.numel() - 1} docs; "
            "pairs need as many of each"
        )
    return _prepare_checked_pairs(q, d, q_cu, d_cu, max_q_len, max_d_len, precision, codes, d_scales)


def _prepare_checked_pairs(q, d, q_cu, d_cu, max_q_len: int, max_d_len: int, precision: str,
                           codes: str = "none", d_scales=None) -> Prepared:
    """The checked call of aligned packed pairs."""
    spec = _spec("pairs", q, precision, "none", "none", codes)
    q, q_scales = _query_codes(q, spec)
    kwargs = dict(nq=1, lq=max_q_len, nb=int(q_cu.numel()) - 1, ld=max_d_len, q_cu=q_cu, d_cu=d_cu,
                  **_scales(d_scales, q_scales))
    return Prepared(spec=spec, q=q, d=d, launch_kwargs=kwargs)


def pack_pairs(
    queries: Sequence[torch.Tensor],
    docs: Sequence[torch.Tensor],
    *,
    precision: str = "tf32",
) -> Prepared:
    """Aligned pairs from two equal-length sequences of 2-D tensors, packed in one copy:
    :func:`concat_pairs`, then :func:`prepare_pair_batch`."""
    precision, batch = concat_pairs(queries, docs, precision)
    return prepare_pair_batch(batch, precision)


def prepare_pair_batch(batch: PairBatch, precision: str) -> Prepared:
    """The checked call of a batch from :func:`concat_pairs`: its offsets on the device,
    in one small copy."""
    q_lens, d_lens, q, d = batch
    # Everything prepare_pairs checks holds by construction here.
    cu = copy_pair_offsets(q_lens, d_lens, q.device)
    return _prepare_checked_pairs(q, d, cu[0], cu[1], max(q_lens), max(d_lens), precision)


def pack_quantized_pairs(queries, docs, *, precision: str = "tf32", quantize_query: bool = False) -> Prepared:
    """Aligned pairs whose docs are packed :class:`QuantizedDocs` (``[Ld, dim]`` each, one
    format): the queries concatenated as :func:`concat_pairs` does, the docs' codes and
    scales concatenated beside them."""
    for name, seq in (("queries", queries), ("docs", docs)):
        if isinstance(seq, torch.Tensor) or not isinstance(seq, Sequence):
            raise TypeError(f"{name} must be a sequence, got {type(seq).__name__}")
    if len(queries) != len(docs):
        raise ValueError(f"queries has {len(queries)} items but docs has {len(docs)}; pairs need equal counts")
    if not queries:
        raise ValueError("queries and docs are empty; at least one pair is needed to pack")
    precision = check_precision(precision)
    first = check_tensor("queries[0]", queries[0])
    if not isinstance(docs[0], QuantizedDocs):
        raise ValueError("quantize_query=True quantizes the query to the docs' format: docs must be QuantizedDocs "
                         f"(maxsim_forge.quantize), got {type(docs[0]).__name__}")
    fmt = docs[0].format
    for i, (qi, di) in enumerate(zip(queries, docs)):
        qi = check_tensor(f"queries[{i}]", qi)
        check_rank(f"queries[{i}]", qi, (2,), "[Lq, dim]")
        check_float_dtype(f"queries[{i}]", qi)
        check_same("queries[0]", first, f"queries[{i}]", qi)
        if not isinstance(di, QuantizedDocs) or di.format != fmt:
            raise TypeError(f"docs[{i}] is {type(di).__name__ if not isinstance(di, QuantizedDocs) else di.format}; "
                            f"docs[0] is QuantizedDocs of format {fmt!r}, so every doc must be")
        check_rank(f"docs[{i}]", di.codes, (2,), "[Ld, dim] (packed QuantizedDocs of one doc)")
        if di.shape[-1] != first.shape[-1]:
            raise ValueError(f"docs[{i}] has {di.shape[-1]} features but queries[0] has {first.shape[-1]}; "
                             "both must match")
        check_device(f"docs[{i}]", di.codes, first, "queries[0]")
    q = torch.cat(list(queries)) if len(queries) > 1 else first
    codes = torch.cat([di.codes for di in docs]) if len(docs) > 1 else docs[0].codes
    scales = torch.cat([di.scales for di in docs]) if len(docs) > 1 else docs[0].scales
    d, d_scales, spec_codes = _doc_side("docs", "queries", q, QuantizedDocs._of(codes, scales, fmt), 2,
                                        "[Ld, dim]", quantize_query)
    q_lens, d_lens = [int(t.shape[0]) for t in queries], [int(t.shape[0]) for t in docs]
    cu = copy_pair_offsets(q_lens, d_lens, q.device)
    return _prepare_checked_pairs(q, d, cu[0], cu[1], max(q_lens), max(d_lens), precision, spec_codes, d_scales)
