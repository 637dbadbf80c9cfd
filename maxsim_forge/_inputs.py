"""Input checks and normalisation shared by every entry point.

Each ``prepare_*`` function, and :func:`pack_pairs` for pairs given as lists, checks
what a caller passed, raises a ``TypeError`` or ``ValueError`` that names the argument,
what was given and what is accepted, and returns a :class:`Prepared` call: the kernel
spec plus the keyword arguments of a generated module's ``launch``. Checks of *values* (lengths in range, cu_seqlens
monotone) read the data back to the host; callers skip them under CUDA graph capture.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from operator import attrgetter
from typing import NamedTuple

import torch

from ._keys import DTYPE_NAMES
from .codegen import KernelSpec

_INDEX_DTYPES = (torch.int32, torch.int64)
PRECISIONS = ("tf32", "ieee")
_I32 = 1 << 31  # offsets below this fit int32


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


def _tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _float_dtype(name: str, t: torch.Tensor) -> str:
    if t.dtype not in DTYPE_NAMES:
        raise TypeError(f"{name} has dtype {t.dtype}; accepted: {', '.join(map(str, DTYPE_NAMES))}")
    return DTYPE_NAMES[t.dtype]


def _same(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.device != b.device:
        raise ValueError(f"{name_b} is on {b.device} but {name_a} is on {a.device}; both must match")
    if a.dtype != b.dtype:
        raise TypeError(f"{name_b} has dtype {b.dtype} but {name_a} has {a.dtype}; both must match")
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"{name_b} has {b.shape[-1]} features but {name_a} has {a.shape[-1]}; both must match"
        )


def _precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not supported; accepted: 'tf32', 'ieee'")
    return precision


def _on(name: str, t: torch.Tensor, ref: torch.Tensor, ref_name: str) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; both must match")


def _lengths(
    name: str, value: object, count: int, limit: int, ref: torch.Tensor, ref_name: str, check: bool
) -> torch.Tensor:
    t = _tensor(name, value)
    if t.dtype not in _INDEX_DTYPES:
        raise TypeError(f"{name} has dtype {t.dtype}; accepted: torch.int32, torch.int64")
    if t.shape != (count,):
        raise ValueError(f"{name} has shape {tuple(t.shape)}; expected ({count},)")
    _on(name, t, ref, ref_name)
    t = t.contiguous()  # the kernels index lengths with unit stride
    if check and count:
        lo, hi = torch.stack([t.min(), t.max()]).tolist()  # one read-back
        if lo < 0 or hi > limit:
            raise ValueError(
                f"{name} holds values from {lo} to {hi}; accepted: 0 to {limit} "
                f"(the padded length of {ref_name})"
            )
    return t


def _mask(name: str, value: object, shape: tuple, ref: torch.Tensor, ref_name: str) -> torch.Tensor:
    t = _tensor(name, value)
    if t.dtype != torch.bool:
        raise TypeError(f"{name} has dtype {t.dtype}; accepted: torch.bool")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)}; expected {shape}")
    _on(name, t, ref, ref_name)
    return t


def _cu_seqlens(name: str, value: object, total: int, ref: torch.Tensor, ref_name: str, check: bool):
    t = _tensor(name, value)
    if t.dtype not in _INDEX_DTYPES:
        raise TypeError(f"{name} has dtype {t.dtype}; accepted: torch.int32, torch.int64")
    if t.dim() != 1 or t.numel() < 1:
        raise ValueError(f"{name} has shape {tuple(t.shape)}; expected (count + 1,) with count >= 0")
    _on(name, t, ref, ref_name)
    t = t.contiguous()  # the kernels index offsets with unit stride
    if check:
        # One read-back for the three facts; the position of a decrease only on error.
        drops = (t[1:] < t[:-1]).any().to(t.dtype) if t.numel() > 1 else t.new_zeros(())
        first, last, decreasing = torch.stack([t[0], t[-1], drops]).tolist()
        if first != 0:
            raise ValueError(f"{name} starts at {first}; it must start at 0")
        if decreasing:
            at = int(torch.nonzero(t[1:] < t[:-1])[0, 0])
            raise ValueError(
                f"{name} decreases at index {at + 1} ({int(t[at])} -> {int(t[at + 1])}); "
                "it must be non-decreasing"
            )
        if last > total:
            raise ValueError(f"{name} ends at {last} but {ref_name} has only {total} tokens")
    return t


def _rank(name: str, t: torch.Tensor, ranks: tuple[int, ...], what: str) -> None:
    if t.dim() not in ranks:
        raise ValueError(f"{name} has shape {tuple(t.shape)}; expected {what}")
    if t.shape[-1] < 1:
        raise ValueError(f"{name} has shape {tuple(t.shape)}; its last (feature) dim must be >= 1")


def _spec(layout: str, q: torch.Tensor, precision: str, q_kind: str, d_kind: str) -> KernelSpec:
    return KernelSpec(
        layout=layout,
        dtype=DTYPE_NAMES[q.dtype],
        dim=int(q.shape[-1]),
        precision=precision,
        q_mask=q_kind,
        d_mask=d_kind,
    )


def _query_side(q, q_lengths, q_mask, check: bool):
    """Shared queries: [Lq, dim] or [Nq, Lq, dim] with optional lengths or mask."""
    q = _tensor("q", q)
    _rank("q", q, (2, 3), "[Lq, dim] or [Nq, Lq, dim]")
    _float_dtype("q", q)
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
        return _lengths(f"{name}_lengths", lengths, count, length, x, name, check), None, "lengths"
    if mask is not None:
        return None, _mask(f"{name}_mask", mask, (count, length), x, name), "mask"
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
) -> Prepared:
    """Padded docs ``d[B, Ld, dim]`` against one query ``[Lq, dim]`` or ``[Nq, Lq, dim]``."""
    q, q_lengths, q_mask, q_kind, squeeze = _query_side(q, q_lengths, q_mask, check_values)
    d = _tensor("d", d)
    _rank("d", d, (3,), "[B, Ld, dim]")
    _float_dtype("d", d)
    _same("q", q, "d", d)
    precision = _precision(precision)
    nb, ld = int(d.shape[0]), int(d.shape[1])
    d_lengths, d_mask, d_kind = _valid_side("d", d, d_lengths, d_mask, check_values)
    layout = "padded" if q.shape[0] == 1 else "allpairs"
    return Prepared(
        spec=_spec(layout, q, precision, q_kind, d_kind),
        q=q,
        d=d,
        launch_kwargs=dict(
            nq=int(q.shape[0]), lq=int(q.shape[1]), nb=nb, ld=ld,
            q_lengths=q_lengths, q_mask=q_mask, d_lengths=d_lengths, d_mask=d_mask,
        ),
        squeeze=squeeze,
    )


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
) -> Prepared:
    """Docs packed as ``[total_tokens, dim]`` with ``cu_seqlens[B + 1]``.

    ``max_doc_len`` is accepted for callers that know it; the kernels read each doc's
    extent from ``cu_seqlens`` on the device and need no host-side maximum.
    """
    q, q_lengths, q_mask, q_kind, squeeze = _query_side(q, q_lengths, q_mask, check_values)
    d = _tensor("d_packed", d_packed)
    _rank("d_packed", d, (2,), "[total_tokens, dim]")
    _float_dtype("d_packed", d)
    _same("q", q, "d_packed", d)
    precision = _precision(precision)
    cu = _cu_seqlens("cu_seqlens", cu_seqlens, int(d.shape[0]), d, "d_packed", check_values)
    if max_doc_len is not None and (not isinstance(max_doc_len, int) or max_doc_len < 0):
        raise ValueError(f"max_doc_len must be a non-negative int or None, got {max_doc_len!r}")
    return Prepared(
        spec=_spec("packed", q, precision, q_kind, "none"),
        q=q,
        d=d,
        launch_kwargs=dict(
            nq=int(q.shape[0]), lq=int(q.shape[1]), nb=int(cu.numel()) - 1,
            ld=max_doc_len or 0, d_cu=cu, q_lengths=q_lengths, q_mask=q_mask,
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
) -> Prepared:
    """Aligned pairs, both sides packed: query i is ``q_packed[q_cu[i]:q_cu[i+1]]``."""
    q = _tensor("q_packed", q_packed)
    _rank("q_packed", q, (2,), "[total_query_tokens, dim]")
    d = _tensor("d_packed", d_packed)
    _rank("d_packed", d, (2,), "[total_doc_tokens, dim]")
    _float_dtype("q_packed", q)
    _float_dtype("d_packed", d)
    _same("q_packed", q, "d_packed", d)
    precision = _precision(precision)
    q_cu = _cu_seqlens("q_cu", q_cu, int(q.shape[0]), q, "q_packed", check_values)
    d_cu = _cu_seqlens("d_cu", d_cu, int(d.shape[0]), d, "d_packed", check_values)
    if q_cu.numel() != d_cu.numel():
        raise ValueError(
            f"q_cu describes {q_cu.numel() - 1} queries but d_cu {d_cu.numel() - 1} docs; "
            "pairs need as many of each"
        )
    if not isinstance(max_q_len, int) or max_q_len < 0:
        raise ValueError(f"max_q_len must be a non-negative int, got {max_q_len!r}")
    return _prepare_checked_pairs(q, d, q_cu, d_cu, max_q_len, max_d_len, precision)


def _prepare_checked_pairs(q, d, q_cu, d_cu, max_q_len: int, max_d_len: int, precision: str) -> Prepared:
    """The checked call of aligned packed pairs."""
    kwargs = dict(nq=1, lq=max_q_len, nb=int(q_cu.numel()) - 1, ld=max_d_len, q_cu=q_cu, d_cu=d_cu)
    return Prepared(spec=_spec("pairs", q, precision, "none", "none"), q=q, d=d, launch_kwargs=kwargs)


def _check_pair(i: int, qi, di, first) -> None:
    qi = _tensor(f"queries[{i}]", qi)
    di = _tensor(f"docs[{i}]", di)
    _rank(f"queries[{i}]", qi, (2,), "[Lq, dim]")
    _rank(f"docs[{i}]", di, (2,), "[Ld, dim]")
    _float_dtype(f"queries[{i}]", qi)
    _same(f"queries[{i}]", qi, f"docs[{i}]", di)
    _same("queries[0]", first, f"queries[{i}]", qi)


def _cat(seq) -> torch.Tensor:
    """One packed copy of a sequence of tensors (a single one is used as it is)."""
    return torch.cat(list(seq)) if len(seq) > 1 else seq[0]


_DTYPE = attrgetter("dtype")
_SHAPE = attrgetter("shape")


class PairBatch(NamedTuple):
    """Aligned pairs from two sequences, concatenated on their device: each side's token
    counts and its ``[total_tokens, dim]`` tensor."""

    q_lens: list[int]
    d_lens: list[int]
    q: torch.Tensor
    d: torch.Tensor


def _try_concat_pairs(queries, docs) -> PairBatch | None:
    """The pairs concatenated when they are plainly well formed; None when anything is
    in doubt, for the checks pair by pair to say what is wrong.

    The hot path of serving batches, where host time is the whole cost: per item only
    its dtype and its length are read in Python; ``torch.cat`` itself refuses other
    ranks, widths and devices. Where a token row is a multiple of 16 bytes, both sides
    go into one buffer in one copy (the docs then start 16-byte aligned, as a buffer of
    their own would); otherwise each side gets its own.
    """
    try:
        dtype = queries[0].dtype
        items = [*queries, *docs]
        if dtype not in DTYPE_NAMES or set(map(_DTYPE, items)) != {dtype}:
            return None
        lens = [shape[0] for shape in map(_SHAPE, items)]
        if 0 in lens:
            return None  # torch.cat skips 1-D empty tensors; let the checks see every item
        n = len(queries)
        q_lens, d_lens = lens[:n], lens[n:]
        width = queries[0].shape[-1]
        if width * dtype.itemsize % 16 == 0:
            packed = torch.cat(items)
            if packed.dim() != 2 or packed.shape[1] < 1:
                return None
            split = sum(q_lens)
            return PairBatch(q_lens, d_lens, packed[:split], packed[split:])
        q_packed, d_packed = _cat(queries), _cat(docs)
    except (AttributeError, TypeError, IndexError, RuntimeError):
        return None
    if (q_packed.dim() != 2 or d_packed.dim() != 2 or q_packed.shape[1] != d_packed.shape[1]
            or q_packed.shape[1] < 1 or q_packed.device != d_packed.device):
        return None
    return PairBatch(q_lens, d_lens, q_packed, d_packed)


def copy_pair_offsets(q_lens: list[int], d_lens: list[int], device: torch.device) -> torch.Tensor:
    """``[2, N + 1]`` offsets of both sides on ``device``, in one small copy.

    Built in an ``array`` (cheaper in host time than ``torch.tensor`` of nested lists),
    int32 unless a side has 2**31 tokens or more. On a GPU the array is copied as it is,
    pageable: CUDA stages a pageable source before the copy call returns, so the array
    may go at once, and the host does not wait for work queued on the stream. Through
    pinned memory the same copy took longer on an H100 host (31 µs idle, 289 µs behind a
    busy GPU, where torch's caching host allocator has no free block; pageable: 16 and
    40 µs; BENCHMARKS.md).
    """
    flat = [0, *accumulate(q_lens), 0, *accumulate(d_lens)]
    wide = max(flat[len(q_lens)], flat[-1]) >= _I32
    rows = array("q" if wide else "i", flat)
    cu = torch.frombuffer(rows, dtype=torch.int64 if wide else torch.int32).view(2, len(q_lens) + 1)
    if device.type != "cuda":
        return cu.clone()  # not a view of the array
    return cu.to(device, non_blocking=True)


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


def concat_pairs(queries, docs, precision: str) -> tuple[str, PairBatch]:
    """The checks of :func:`pack_pairs` and its host side: ``(precision, batch)``, both
    sides concatenated (in one copy where :func:`_try_concat_pairs` can)."""
    for name, seq in (("queries", queries), ("docs", docs)):
        if isinstance(seq, torch.Tensor) or not isinstance(seq, Sequence):
            raise TypeError(f"{name} must be a sequence of 2-D tensors, got {type(seq).__name__}")
    if len(queries) != len(docs):
        raise ValueError(
            f"queries has {len(queries)} items but docs has {len(docs)}; pairs need equal counts"
        )
    if not queries:
        raise ValueError("queries and docs are empty; at least one pair is needed to pack")
    precision = _precision(precision)
    batch = _try_concat_pairs(queries, docs)
    if batch is None:  # pair by pair: the checks name what is wrong, or pass the edge cases
        first = _tensor("queries[0]", queries[0])
        for i, (qi, di) in enumerate(zip(queries, docs)):
            _check_pair(i, qi, di, first)
        batch = PairBatch([int(t.shape[0]) for t in queries], [int(t.shape[0]) for t in docs],
                          _cat(queries), _cat(docs))
    return precision, batch


def prepare_pair_batch(batch: PairBatch, precision: str) -> Prepared:
    """The checked call of a batch from :func:`concat_pairs`: its offsets on the device,
    in one small copy."""
    q_lens, d_lens, q, d = batch
    # Everything prepare_pairs checks holds by construction here.
    cu = copy_pair_offsets(q_lens, d_lens, q.device)
    return _prepare_checked_pairs(q, d, cu[0], cu[1], max(q_lens), max(d_lens), precision)
