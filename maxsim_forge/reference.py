"""The float64 torch reference: the semantics every kernel is checked against.

- products and sums in float64;
- a masked doc token never wins a max; a masked query token adds 0;
- a doc with no valid token scores 0 (never -inf, never NaN);
- NaN and inf: a NaN in a valid token makes that score NaN; a masked or padded token
  never changes a score, whatever it holds (it is selected away, never multiplied by 0);
  a query token whose every valid product is -inf adds 0, as one facing no valid token.

Every function takes ``absolute=True`` to return instead the same sum over the
*absolute* products, sum_i max_j sum_k |q_ik| |d_jk|: the magnitude of every term a
kernel adds up, which bounds its rounding error. Kernel errors are judged relative to
it, so a score that cancels to near zero, in a dot product or in the row sum, is not
held to a tighter bound than the terms it is made of.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Score elements materialised at once; bounds the reference's memory.
_CHUNK_ELEMENTS = 1 << 25


def valid_tokens(count: int, length: int, lengths, mask, device) -> torch.Tensor:
    """Boolean [count, length]: the given mask, else positions below each length, else all."""
    if mask is not None:
        return mask.to(device=device, dtype=torch.bool)
    valid = torch.ones(count, length, dtype=torch.bool, device=device)
    if lengths is not None:
        pos = torch.arange(length, device=device)
        valid = pos[None, :] < lengths.to(device).long()[:, None]
    return valid


def masked_max(s: torch.Tensor, valid: torch.Tensor, dim: int) -> torch.Tensor:
    """Max over ``dim`` of the entries where ``valid`` (broadcast to ``s``) holds; 0 where
    none does. Overwrites ``s``, unless autograd records it (then the reference is
    differentiable: a float64 autograd reference for the gradients)."""
    if s.requires_grad:
        m = s.masked_fill(~valid, float("-inf")).amax(dim=dim)
        return m.masked_fill(torch.isneginf(m), 0.0)
    m = s.masked_fill_(~valid, float("-inf")).amax(dim=dim)
    return m.masked_fill_(torch.isneginf(m), 0.0)


def query_sum(m: torch.Tensor, q_valid: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum over ``dim`` of the row maxima of valid query tokens: a masked token adds 0
    whatever its maximum is (NaN and inf included). Overwrites ``m`` unless autograd
    records it."""
    if m.requires_grad:
        return m.masked_fill(~q_valid, 0.0).sum(dim=dim)
    return m.masked_fill_(~q_valid, 0.0).sum(dim=dim)


def padded_scores(q, q_valid, d, d_valid, *, absolute: bool = False, chunk: int = _CHUNK_ELEMENTS) -> torch.Tensor:
    """q [Nq, Lq, k], d [B, Ld, k] with validity masks -> [Nq, B], in float64 for float64
    inputs (the reference) and float32 otherwise (the torch baseline: products and maxima
    in the inputs' dtype); at most ``chunk`` score elements at once."""
    nq, lq = q.shape[:2]
    nb, ld = d.shape[:2]
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    out = torch.zeros(nq, nb, dtype=dtype, device=q.device)
    if nq == 0 or nb == 0 or lq == 0 or ld == 0:
        return out
    step = max(1, chunk // max(1, nq * lq * ld))
    if absolute:  # the magnitude of the products: every score element is >= 0
        q, d = q.abs(), d.abs()
    for b0 in range(0, nb, step):
        s = torch.einsum("nqk,btk->nbqt", q, d[b0 : b0 + step])
        m = masked_max(s, d_valid[None, b0 : b0 + step, None, :], dim=-1).to(dtype)
        out[:, b0 : b0 + step] = query_sum(m, q_valid[:, None, :], dim=-1)
    return out


def maxsim_reference(
    q: torch.Tensor,
    d: torch.Tensor,
    *,
    q_lengths: torch.Tensor | None = None,
    q_mask: torch.Tensor | None = None,
    d_lengths: torch.Tensor | None = None,
    d_mask: torch.Tensor | None = None,
    absolute: bool = False,
) -> torch.Tensor:
    """Padded layouts: ``q[Lq, dim]`` or ``[Nq, Lq, dim]`` against ``d[B, Ld, dim]``.

    Returns float64 ``[B]`` or ``[Nq, B]``.
    """
    squeeze = q.dim() == 2
    if squeeze:
        q = q[None]
        q_mask = q_mask[None] if q_mask is not None and q_mask.dim() == 1 else q_mask
        q_lengths = q_lengths.reshape(1) if q_lengths is not None else None
    q64, d64 = q.double(), d.double()
    q_valid = valid_tokens(q.shape[0], q.shape[1], q_lengths, q_mask, q.device)
    d_valid = valid_tokens(d.shape[0], d.shape[1], d_lengths, d_mask, d.device)
    out = padded_scores(q64, q_valid, d64, d_valid, absolute=absolute)
    return out[0] if squeeze else out


def unpack(packed: torch.Tensor, cu_seqlens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[total, dim]`` + ``cu_seqlens`` -> padded ``[B, max_len, dim]`` and its lengths."""
    cu = cu_seqlens.long().cpu()
    lengths = cu[1:] - cu[:-1]
    longest = int(lengths.max()) if lengths.numel() else 0
    out = packed.new_zeros(lengths.numel(), longest, packed.shape[-1])
    for i in range(lengths.numel()):
        out[i, : lengths[i]] = packed[cu[i] : cu[i + 1]]
    return out, lengths.to(packed.device)


def maxsim_packed_reference(
    q: torch.Tensor,
    d_packed: torch.Tensor,
    cu_seqlens: torch.Tensor,
    *,
    q_lengths: torch.Tensor | None = None,
    q_mask: torch.Tensor | None = None,
    absolute: bool = False,
) -> torch.Tensor:
    """Docs packed as ``[total_tokens, dim]`` with ``cu_seqlens[B + 1]``."""
    d, d_lengths = unpack(d_packed, cu_seqlens)
    return maxsim_reference(q, d, q_lengths=q_lengths, q_mask=q_mask, d_lengths=d_lengths, absolute=absolute)


def maxsim_pairs_reference(
    queries: Sequence[torch.Tensor], docs: Sequence[torch.Tensor], *, absolute: bool = False
) -> torch.Tensor:
    """Query i against doc i, any lengths -> float64 ``[N]``."""
    out = [maxsim_reference(qi, di[None], absolute=absolute)[0] for qi, di in zip(queries, docs)]
    device = queries[0].device if len(queries) else "cpu"
    return torch.stack(out) if out else torch.zeros(0, dtype=torch.float64, device=device)




def dequantize_codes(codes: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``codes * scales`` (one scale per token) in ``dtype``, computed in float32 or float64."""
    work = torch.float64 if dtype == torch.float64 else torch.float32
    return (codes.to(work) * scales.to(work)[..., None]).to(dtype)


def dequantized(prep, dtype: torch.dtype):
    """A quantized call (``Prepared``) with its docs, and its query where quantized, as the
    float tokens they stand for; the query otherwise as given."""
    import dataclasses

    k = prep.launch_kwargs
    q = dequantize_codes(prep.q, k["q_scales"], dtype) if k.get("q_scales") is not None else prep.q.to(dtype)
    d = dequantize_codes(prep.d, k["d_scales"], dtype)
    kwargs = {n: v for n, v in k.items() if n not in ("d_scales", "q_scales")}
    return dataclasses.replace(prep, q=q, d=d, launch_kwargs=kwargs)


def reference_for(prep, *, absolute: bool = False) -> torch.Tensor:
    """The float64 reference of a checked call (``maxsim_forge._inputs.Prepared``),
    in the shape its launcher returns: ``[nq, nb]``, or ``[nb]`` for pairs."""
    k = prep.launch_kwargs
    layout = prep.spec.layout
    if prep.spec.codes != "none":  # the tokens the codes stand for, in float64
        prep = dequantized(prep, torch.float64)
    q_side = {"q_lengths": k.get("q_lengths"), "q_mask": k.get("q_mask")}
    if layout == "pairs":
        q_cu, d_cu = k["q_cu"].long().cpu(), k["d_cu"].long().cpu()
        queries = [prep.q[q_cu[i] : q_cu[i + 1]] for i in range(k["nb"])]
        docs = [prep.d[d_cu[i] : d_cu[i + 1]] for i in range(k["nb"])]
        out = maxsim_pairs_reference(queries, docs, absolute=absolute)
        return out if out.numel() else torch.zeros(0, dtype=torch.float64, device=prep.q.device)
    if layout == "packed":
        return maxsim_packed_reference(prep.q, prep.d, k["d_cu"], absolute=absolute, **q_side)
    return maxsim_reference(
        prep.q, prep.d, d_lengths=k.get("d_lengths"), d_mask=k.get("d_mask"), absolute=absolute, **q_side
    )


__all__ = [
    "dequantize_codes",
    "dequantized",
    "maxsim_packed_reference",
    "maxsim_pairs_reference",
    "masked_max",
    "maxsim_reference",
    "padded_scores",
    "query_sum",
    "reference_for",
    "unpack",
    "valid_tokens",
]
