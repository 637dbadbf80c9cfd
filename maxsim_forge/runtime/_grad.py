"""Gradients of every scoring call (autograd), with the forward's semantics.

The score of query ``n`` against doc ``b`` is ``sum_i max_j q_i . d_j`` over valid tokens,
so for each valid query token ``i`` one doc token ``j*(i)`` wins: the gradient of the score
with respect to ``q_i`` is ``d_j*``, and with respect to ``d_j`` the sum of the ``q_i`` it won
for. Ties go to the lowest index (the first of equal maxima). A masked or padded token,
a query token facing no valid doc token (or whose every valid product is -inf), and an
empty doc get zero gradient.

The forward keeps only what the call already holds (its inputs, by reference); the
backward finds each winner again, a chunk of docs at a time, so no more than ``_CHUNK``
scores exist at once and nothing of size ``Lq x Ld`` stays beyond a chunk.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._inputs import Prepared
from ..reference import valid_tokens

# Score elements one backward chunk holds.
_CHUNK = 1 << 24


def needs_grad(*tensors) -> bool:
    """A call autograd has to see: grad mode on and an input that requires grad."""
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def _work_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _winners(s: torch.Tensor, d_valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(index of the winning doc token, whether there is one) over the last dim of ``s``,
    invalid tokens never winning, ties to the lowest index."""
    s = s.masked_fill(~d_valid, float("-inf"))
    best, idx = s.max(dim=-1)  # the first of equal maxima
    return idx, ~torch.isneginf(best)


def _gather_rows(x: torch.Tensor, cu: torch.Tensor, start: int, stop: int, length: int):
    """Rows of items start..stop of a packed ``x``: (padded [n, length, dim], valid [n, length],
    row index [n, length] into ``x``)."""
    cu = cu.long()
    begin = cu[start:stop]
    lens = cu[start + 1 : stop + 1] - begin
    pos = torch.arange(length, device=x.device)
    valid = pos[None, :] < lens[:, None]
    rows = torch.where(valid, begin[:, None] + pos[None, :], torch.zeros_like(begin)[:, None])
    return x[rows], valid, rows


def _longest(cu: torch.Tensor) -> int:
    return int((cu[1:] - cu[:-1]).max()) if cu.numel() > 1 else 0


def backward_scores(prep: Prepared, grad: torch.Tensor, *, need_q: bool = True,
                    need_d: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients (``dq``, ``dd``, shaped and typed as ``prep.q`` and ``prep.d``) of a checked
    call, for ``grad`` of the scores in its launcher's shape (``[nq, nb]``; pairs ``[nb]``)."""
    if prep.spec.layout == "pairs":
        return _pairs_backward(prep, grad, need_q, need_d)
    k = prep.launch_kwargs
    q, d = prep.q, prep.d
    work = _work_dtype(q)
    nq, lq, nb = k["nq"], k["lq"], k["nb"]
    dim = q.shape[-1]
    dq = torch.zeros(q.shape, dtype=work, device=q.device) if need_q else None
    dd = torch.zeros(d.shape, dtype=work, device=d.device) if need_d else None
    packed = prep.spec.layout == "packed"
    ld = (_longest(k["d_cu"]) if packed else int(d.shape[1])) if nb else 0
    if nq == 0 or nb == 0 or lq == 0 or ld == 0:
        return _cast(dq, q), _cast(dd, d)
    q_valid = valid_tokens(nq, lq, k.get("q_lengths"), k.get("q_mask"), q.device)
    qw = q.to(work)
    g = grad.to(work)
    step = max(1, _CHUNK // max(1, nq * lq * ld))
    for b0 in range(0, nb, step):
        b1 = min(nb, b0 + step)
        if packed:
            dp, d_valid, rows = _gather_rows(d, k["d_cu"], b0, b1, ld)
        else:
            dp = d[b0:b1]
            d_valid = valid_tokens(b1 - b0, ld, _part(k.get("d_lengths"), b0, b1), _part(k.get("d_mask"), b0, b1),
                                   d.device)
        dw = dp.to(work)
        s = torch.einsum("nid,bjd->bnij", qw, dw)  # [c, nq, lq, ld]
        idx, has = _winners(s, d_valid[:, None, None, :])
        del s
        # The weight of each (doc, query token): its score's gradient where it counts.
        w = g[:, b0:b1].t()[:, :, None] * (has & q_valid[None]).to(work)  # [c, nq, lq]
        c = b1 - b0
        if need_q:
            won = dw[torch.arange(c, device=d.device)[:, None, None], idx]  # [c, nq, lq, dim]
            dq += torch.einsum("bni,bnid->nid", w, won)
        if need_d:
            target = (torch.arange(c, device=d.device)[:, None, None] * ld + idx).reshape(-1)
            part = torch.zeros(c * ld, dim, dtype=work, device=d.device)
            part.index_add_(0, target, (w[..., None] * qw[None]).reshape(-1, dim))
            part = part.view(c, ld, dim)
            if packed:
                dd.index_add_(0, rows[d_valid], part[d_valid])
            else:
                dd[b0:b1] += part
    return _cast(dq, q), _cast(dd, d)


def _pairs_backward(prep: Prepared, grad: torch.Tensor, need_q: bool, need_d: bool):
    k = prep.launch_kwargs
    q, d = prep.q, prep.d
    work = _work_dtype(q)
    nb = k["nb"]
    lq, ld = k["lq"] or _longest(k["q_cu"]), k["ld"] or _longest(k["d_cu"])
    dq = torch.zeros(q.shape, dtype=work, device=q.device) if need_q else None
    dd = torch.zeros(d.shape, dtype=work, device=d.device) if need_d else None
    if nb == 0 or lq == 0 or ld == 0:
        return _cast(dq, q), _cast(dd, d)
    g = grad.to(work)
    step = max(1, _CHUNK // max(1, lq * ld))
    for b0 in range(0, nb, step):
        b1 = min(nb, b0 + step)
        qp, q_valid, q_rows = _gather_rows(q, k["q_cu"], b0, b1, lq)
        dp, d_valid, d_rows = _gather_rows(d, k["d_cu"], b0, b1, ld)
        qw, dw = qp.to(work), dp.to(work)
        idx, has = _winners(torch.einsum("bid,bjd->bij", qw, dw), d_valid[:, None, :])
        w = g[b0:b1, None] * (has & q_valid).to(work)  # [c, lq]
        c = b1 - b0
        if need_q:
            won = dw[torch.arange(c, device=d.device)[:, None], idx]  # [c, lq, dim]
            dq.index_add_(0, q_rows[q_valid], (w[..., None] * won)[q_valid])
        if need_d:
            part = torch.zeros(c, ld, q.shape[-1], dtype=work, device=d.device)
            part.view(c * ld, -1).index_add_(
                0, (torch.arange(c, device=d.device)[:, None] * ld + idx).reshape(-1),
                (w[..., None] * qw).reshape(-1, q.shape[-1]))
            dd.index_add_(0, d_rows[d_valid], part[d_valid])
    return _cast(dq, q), _cast(dd, d)


def _part(t: torch.Tensor | None, b0: int, b1: int) -> torch.Tensor | None:
    return None if t is None else t[b0:b1]


def _cast(g: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    return None if g is None else g.to(like.dtype)


class Scores(torch.autograd.Function):
    """A scoring call autograd sees: ``build(q, d)`` makes the checked call of detached
    inputs, ``run`` scores it (the usual dispatch: kernels, or torch), the backward is
    :func:`backward_scores`."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, d: torch.Tensor, build: Callable[[torch.Tensor, torch.Tensor], Prepared],
                run: Callable[[Prepared], torch.Tensor]) -> torch.Tensor:
        prep = build(q.detach(), d.detach())
        ctx.prep = prep
        ctx.q_shape, ctx.d_shape = q.shape, d.shape
        return run(prep)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        prep = ctx.prep
        g = grad.unsqueeze(0) if prep.squeeze else grad
        need_q, need_d = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dq, dd = backward_scores(prep, g.contiguous(), need_q=need_q, need_d=need_d)
        dq = None if dq is None else dq.reshape(ctx.q_shape)
        dd = None if dd is None else dd.reshape(ctx.d_shape)
        return dq, dd, None, None


__all__ = ["Scores", "backward_scores", "needs_grad"]
