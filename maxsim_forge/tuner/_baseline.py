"""The torch baseline every winner is compared with: eager fp16/bf16 einsum, max, sum.

Packed and pair layouts are padded once before timing, so the baseline is timed on
its compute alone (which flatters it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._inputs import Prepared
from ..codegen import torch_dtype
from ..reference import dequantized, padded_scores, unpack, valid_tokens

# Score elements one einsum may materialise.
_CHUNK = 1 << 28


def torch_baseline(prep: Prepared) -> Callable[[], torch.Tensor]:
    """A closure computing the call with plain torch ops in the input dtype (quantized
    docs: on the float tokens they stand for, dequantized once beforehand in the query's
    dtype, so the baseline is torch scoring float docs)."""
    if prep.spec.codes != "none":
        prep = dequantized(prep, torch_dtype(prep.spec.dtype))
    k = prep.launch_kwargs
    q, d = prep.q, prep.d
    layout = prep.spec.layout
    if layout == "pairs":
        qs, q_len = unpack(q, k["q_cu"])
        ds, d_len = unpack(d, k["d_cu"])
        q_valid = valid_tokens(qs.shape[0], qs.shape[1], q_len, None, q.device)
        d_valid = valid_tokens(ds.shape[0], ds.shape[1], d_len, None, d.device)

        def pairs() -> torch.Tensor:
            s = torch.bmm(qs, ds.transpose(1, 2)).masked_fill(~d_valid[:, None, :], float("-inf"))
            m = s.amax(-1).float()
            return (torch.where(torch.isneginf(m), 0.0, m) * q_valid).sum(-1)

        return pairs
    q_valid = valid_tokens(q.shape[0], q.shape[1], k.get("q_lengths"), k.get("q_mask"), q.device)
    if layout == "packed":
        d, d_len = unpack(d, k["d_cu"])
        d_valid = valid_tokens(d.shape[0], d.shape[1], d_len, None, d.device)
    else:
        d_valid = valid_tokens(d.shape[0], d.shape[1], k.get("d_lengths"), k.get("d_mask"), d.device)
    return lambda: padded_scores(q, q_valid, d, d_valid, chunk=_CHUNK)
