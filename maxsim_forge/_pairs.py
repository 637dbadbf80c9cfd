"""Aligned pairs given as two sequences of tensors, packed on their device: both sides
concatenated (in one copy where the rows allow it) and their offsets copied in one small
transfer. :func:`maxsim_forge._inputs.prepare_pair_batch` makes the checked call of a batch.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from itertools import accumulate
from operator import attrgetter
from typing import NamedTuple

import torch

from ._checks import check_float_dtype, check_precision, check_rank, check_same, check_tensor
from ._keys import DTYPE_NAMES

_I32 = 1 << 31  # offsets below this fit int32
_DTYPE = attrgetter("dtype")
_SHAPE = attrgetter("shape")


class PairBatch(NamedTuple):
    """Aligned pairs from two sequences, concatenated on their device: each side's token
    counts and its ``[total_tokens, dim]`` tensor."""

    q_lens: list[int]
    d_lens: list[int]
    q: torch.Tensor
    d: torch.Tensor


def _cat(seq) -> torch.Tensor:
    """One packed copy of a sequence of tensors (a single one is used as it is)."""
    return torch.cat(list(seq)) if len(seq) > 1 else seq[0]


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


def _check_pair(i: int, qi, di, first) -> None:
    qi = check_tensor(f"queries[{i}]", qi)
    di = check_tensor(f"docs[{i}]", di)
    check_rank(f"queries[{i}]", qi, (2,), "[Lq, dim]")
    check_rank(f"docs[{i}]", di, (2,), "[Ld, dim]")
    check_float_dtype(f"queries[{i}]", qi)
    check_same(f"queries[{i}]", qi, f"docs[{i}]", di)
    check_same("queries[0]", first, f"queries[{i}]", qi)


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
    precision = check_precision(precision)
    batch = _try_concat_pairs(queries, docs)
    if batch is None:  # pair by pair: the checks name what is wrong, or pass the edge cases
        first = check_tensor("queries[0]", queries[0])
        for i, (qi, di) in enumerate(zip(queries, docs)):
            _check_pair(i, qi, di, first)
        batch = PairBatch([int(t.shape[0]) for t in queries], [int(t.shape[0]) for t in docs],
                          _cat(queries), _cat(docs))
    return precision, batch


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
