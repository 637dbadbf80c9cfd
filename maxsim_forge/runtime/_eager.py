"""Scores with plain torch ops, for the calls that arrive while a kernel compiles.

Tensor-core matmuls in the inputs' dtype with float32 results, chunked so that no
more than ``_CHUNK`` score elements exist at once; ragged sides are gathered into
padded blocks on the device. Same semantics as the kernels and the reference: a
masked doc token never wins, a masked query token adds 0, a docless score is 0, a NaN
in a valid token makes its score NaN and a masked token's NaN or inf changes nothing.
"""

from __future__ import annotations

import torch

from .._inputs import Prepared
from ..reference import dequantize_codes, masked_max, query_sum, valid_tokens

# Score elements (float32) materialised at once: 256 MiB.
_CHUNK = 1 << 26
# Bytes of gathered (or copied) token rows at once, per side.
_BYTES = 1 << 28


def _step(scores_per_item: int, *rows: tuple[int, int]) -> int:
    """Items per chunk: at most ``_CHUNK`` scores and ``_BYTES`` of each side's rows,
    given per item (tokens, bytes per token) for each side."""
    step = _CHUNK // max(1, scores_per_item)
    for tokens, row_bytes in rows:
        step = min(step, _BYTES // max(1, tokens * row_bytes))
    return max(1, step)


def _mm_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` (2-D or batched 3-D) with float32 results, fp16/bf16 on tensor cores."""
    op = torch.mm if a.dim() == 2 else torch.bmm
    if a.dtype != torch.float32 and a.is_cuda:
        try:
            return op(a, b, out_dtype=torch.float32)
        except (TypeError, RuntimeError):  # a torch without out_dtype
            pass
    return op(a.float(), b.float())


def packed_rows(cu: torch.Tensor, start: int, stop: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row index [n, length], valid [n, length]) of items start..stop of a packed tensor with
    offsets ``cu``, padded to ``length``; a padding position points at row 0."""
    cu = cu.long()
    begin = cu[start:stop]
    lens = cu[start + 1 : stop + 1] - begin
    pos = torch.arange(length, device=cu.device)
    valid = pos[None, :] < lens[:, None]
    return torch.where(valid, begin[:, None] + pos[None, :], torch.zeros_like(begin)[:, None]), valid


def _gather(x: torch.Tensor, cu: torch.Tensor, start: int, stop: int, length: int, scales=None):
    """Items start..stop of a packed ``x`` with offsets ``cu`` -> padded [n, length, dim], valid;
    codes with per-token ``scales`` come back dequantized to float32."""
    idx, valid = packed_rows(cu, start, stop, length)
    if scales is not None:
        return dequantize_codes(x[idx], scales[idx], torch.float32), valid
    return x[idx], valid


def longest(cu: torch.Tensor) -> int:
    """The longest item of packed offsets ``cu`` (a read-back)."""
    return int((cu[1:] - cu[:-1]).max()) if cu.numel() > 1 else 0


def eager_scores(prep: Prepared) -> torch.Tensor:
    """Float32 scores of a checked call, in its launcher's shape (``[nq, nb]``; pairs ``[nb]``).

    Reads the longest item back to the host where the call does not give it.
    """
    k = prep.launch_kwargs
    q, d = prep.q, prep.d
    ds = k.get("d_scales")
    if ds is not None:
        # Quantized: the query as the float32 tokens it stands for; the docs' codes are
        # dequantized to float32 a chunk at a time (_rows).
        q = dequantize_codes(q, k["q_scales"], torch.float32) if k.get("q_scales") is not None else q.float()
    nq, lq, nb, ld = k["nq"], k["lq"], k["nb"], k["ld"]
    dim = q.shape[-1]
    layout = prep.spec.layout
    if layout == "pairs":
        out = torch.zeros(nb, dtype=torch.float32, device=q.device)
        lq = lq or longest(k["q_cu"])
        ld = ld or longest(k["d_cu"])
        if nb == 0 or lq == 0 or ld == 0:
            return out
        row = dim * q.element_size()
        step = _step(lq * ld, (lq, row), (ld, row))
        for b0 in range(0, nb, step):
            b1 = min(nb, b0 + step)
            qp, q_valid = _gather(q, k["q_cu"], b0, b1, lq)
            dp, d_valid = _gather(d, k["d_cu"], b0, b1, ld, ds)
            m = masked_max(_mm_f32(qp, dp.transpose(1, 2)), d_valid[:, None, :], dim=2)  # [n, Lq]
            out[b0:b1] = query_sum(m, q_valid, dim=1)
        return out
    out = torch.zeros(nq, nb, dtype=torch.float32, device=q.device)
    if layout == "packed":
        ld = ld or longest(k["d_cu"])
    if nq == 0 or nb == 0 or lq == 0 or ld == 0:
        return out
    q_valid = valid_tokens(nq, lq, k.get("q_lengths"), k.get("q_mask"), q.device)
    qt = q.reshape(nq * lq, dim).t()
    step = _step(nq * lq * ld, (ld, dim * (4 if ds is not None else d.element_size())))
    for b0 in range(0, nb, step):
        b1 = min(nb, b0 + step)
        if layout == "packed":
            dp, d_valid = _gather(d, k["d_cu"], b0, b1, ld, ds)
        else:
            dp = d[b0:b1] if ds is None else dequantize_codes(d[b0:b1], ds[b0:b1], torch.float32)
            d_valid = valid_tokens(b1 - b0, ld, _part(k.get("d_lengths"), b0, b1),
                                   _part(k.get("d_mask"), b0, b1), d.device)
        # Every query token against every doc token of the chunk in one matmul.
        s = _mm_f32(dp.reshape(-1, dim), qt).view(b1 - b0, ld, nq, lq)
        m = masked_max(s, d_valid[:, :, None, None], dim=1)  # [n, nq, lq]
        out[:, b0:b1] = query_sum(m, q_valid[None], dim=2).t()
    return out


def _part(t: torch.Tensor | None, b0: int, b1: int) -> torch.Tensor | None:
    return None if t is None else t[b0:b1]
