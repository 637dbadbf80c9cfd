"""Gradients of every scoring call (autograd), with the forward's semantics.

The score of query ``n`` against doc ``b`` is ``sum_i max_j q_i . d_j`` over valid tokens,
so for each valid query token ``i`` one doc token ``j*(i)`` wins: the gradient of the score
with respect to ``q_i`` is ``d_j*``, and with respect to ``d_j`` the sum of the ``q_i`` it won
for. Ties go to the lowest index (the first of equal maxima). A masked or padded token,
a query token facing no valid doc token (or whose every valid product is -inf), and an
empty doc get zero gradient.

The forward keeps only what the call already holds (its inputs, by reference); the
backward finds each winner again. Where kernels run, the generated winners kernel finds
them (never storing a score) and the generated gradient kernels follow them; elsewhere
torch does both a chunk of docs at a time, so no more than ``_CHUNK`` scores exist at
once and nothing of size ``Lq x Ld`` stays beyond a chunk.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable

import torch

from .._inputs import Prepared
from .._keys import gpu_info
from ..codegen import (
    DQ_PROGRAMS, WinnersConfig, grads_launcher, grads_meta, interpreting, kernels_run_on, launch_guard,
    winners_config, winners_launcher, winners_smem,
)
from ..reference import valid_tokens
from ._eager import longest, packed_rows
from ._keys import bucket_key
from ._lookup import decide_winners

log = logging.getLogger("maxsim_forge")

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
    rows, valid = packed_rows(cu, start, stop, length)
    return x[rows], valid, rows


def backward_scores(prep: Prepared, grad: torch.Tensor, *, need_q: bool = True, need_d: bool = True,
                    idx: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients (``dq``, ``dd``, shaped and typed as ``prep.q`` and ``prep.d``) of a checked
    call, for ``grad`` of the scores in its launcher's shape (``[nq, nb]``; pairs ``[nb]``).

    Where the forward runs kernels (a GPU, or Triton's interpreter), the winners come
    from the generated winners kernel (``idx``: the ones the forward kept, which the
    backward sorts in place) and the gradients follow them; elsewhere (the CPU's torch
    path, float64, ``MAXSIM_FORGE_DISABLE``), or if a kernel fails on this device (said
    once), torch finds them a chunk of docs at a time."""
    if _kernels_for(prep):
        try:
            with launch_guard(prep.q):
                return grads_from_winners(prep, winners(prep) if idx is None else idx, grad, need_q, need_d)
        except Exception as exc:  # noqa: BLE001 - a kernel this device cannot run: torch, said once
            key = (prep.spec, type(exc).__name__)
            if key not in _failed:
                _failed.add(key)
                log.warning("maxsim-forge: the backward's kernels of %s failed (%s: %s); the backward uses torch",
                            prep.spec.key(), type(exc).__name__, str(exc)[:300])
    return _torch_backward(prep, grad, need_q, need_d)


_failed: set = set()


def scores_keeping_winners(prep: Prepared) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A training forward as the winners kernel gives it: (the scores, shaped as the call
    returns them, and the winners, kept for the backward); None where that path is not
    taken (no kernels here, pairs, or the kernel failed: said once), and the call is
    scored the usual way. Scores are the winning rows' parts summed in float32, with the
    forward's rules for masks, empty docs, NaN and inf."""
    if prep.spec.layout == "pairs" or not _kernels_for(prep):
        return None
    try:
        with launch_guard(prep.q):
            out, idx = _plan(prep).scores(prep)
    except Exception as exc:  # noqa: BLE001 - the backward finds the winners (or torch does), said there
        key = ("forward", prep.spec, type(exc).__name__)
        if key not in _failed:
            _failed.add(key)
            log.warning("maxsim-forge: the winners kernel of %s failed in the forward (%s: %s); the usual "
                        "forward scores the call", prep.spec.key(), type(exc).__name__, str(exc)[:300])
        return None
    return (out[0] if prep.squeeze else out), idx


def _kernels_for(prep: Prepared) -> bool:
    spec, device = prep.spec, prep.q.device
    if spec.dtype == "fp64" or spec.codes != "none" or not kernels_run_on(device):
        return False
    return device.type != "cuda" or _fits(spec, device)


@functools.lru_cache(maxsize=256)
def _fits(spec, device: torch.device) -> bool:
    """Whether the winners kernel's smallest tiles fit this GPU's shared memory."""
    return winners_smem(spec, winners_config(spec, rows=64, ld=64)) <= gpu_info(device).smem_limit


def _torch_backward(prep: Prepared, grad: torch.Tensor, need_q: bool,
                    need_d: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The backward in torch: each chunk's scores again, their winners, then the gradients."""
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
    ld = (longest(k["d_cu"]) if packed else int(d.shape[1])) if nb else 0
    if nq == 0 or nb == 0 or lq == 0 or ld == 0:
        return _cast(dq, q), _cast(dd, d)
    q_valid = valid_tokens(nq, lq, k.get("q_lengths"), k.get("q_mask"), q.device)
    qw = q.to(work)
    g = grad.to(work)
    # Per doc: its scores (nq lq ld), and the rows gathered and scattered (nq lq dim).
    step = max(1, _CHUNK // max(1, nq * lq * max(ld, dim)))
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
        # The weight of each (doc, query token): its score's gradient where it counts. Rows
        # it does not count for are selected out (not multiplied by 0: a masked token may hold
        # NaN, and a score's gradient may be inf).
        sel = (has & q_valid[None])[..., None]
        w = torch.where(sel[..., 0], g[:, b0:b1].t()[:, :, None], 0.0)  # [c, nq, lq]
        c = b1 - b0
        if need_q:
            won = dw[torch.arange(c, device=d.device)[:, None, None], idx]  # [c, nq, lq, dim]
            dq += torch.einsum("bni,bnid->nid", w, torch.where(sel, won, 0.0))
        if need_d:
            target = (torch.arange(c, device=d.device)[:, None, None] * ld + idx).reshape(-1)
            part = torch.zeros(c * ld, dim, dtype=work, device=d.device)
            part.index_add_(0, target, torch.where(sel, w[..., None] * qw[None], 0.0).reshape(-1, dim))
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
    lq, ld = k["lq"] or longest(k["q_cu"]), k["ld"] or longest(k["d_cu"])
    dq = torch.zeros(q.shape, dtype=work, device=q.device) if need_q else None
    dd = torch.zeros(d.shape, dtype=work, device=d.device) if need_d else None
    if nb == 0 or lq == 0 or ld == 0:
        return _cast(dq, q), _cast(dd, d)
    g = grad.to(work)
    step = max(1, _CHUNK // max(1, lq * max(ld, q.shape[-1])))
    for b0 in range(0, nb, step):
        b1 = min(nb, b0 + step)
        qp, q_valid, q_rows = _gather_rows(q, k["q_cu"], b0, b1, lq)
        dp, d_valid, d_rows = _gather_rows(d, k["d_cu"], b0, b1, ld)
        qw, dw = qp.to(work), dp.to(work)
        idx, has = _winners(torch.einsum("bid,bjd->bij", qw, dw), d_valid[:, None, :])
        sel = (has & q_valid)[..., None]  # selected, not multiplied by 0 (see _torch_backward)
        w = torch.where(sel[..., 0], g[b0:b1, None], 0.0)  # [c, lq]
        c = b1 - b0
        if need_q:
            won = dw[torch.arange(c, device=d.device)[:, None], idx]  # [c, lq, dim]
            dq.index_add_(0, q_rows[q_valid], torch.where(sel, w[..., None] * won, 0.0)[q_valid])
        if need_d:
            part = torch.zeros(c, ld, q.shape[-1], dtype=work, device=d.device)
            part.view(c * ld, -1).index_add_(
                0, (torch.arange(c, device=d.device)[:, None] * ld + idx).reshape(-1),
                torch.where(sel, w[..., None] * qw, 0.0).reshape(-1, q.shape[-1]))
            dd.index_add_(0, d_rows[d_valid], part[d_valid])
    return _cast(dq, q), _cast(dd, d)


# ---- the kernel path: the winners from a generated kernel, the gradients from two more
# (pairs: gathers and a scatter in torch)
class _Plan:
    """What the backward of one call shape works out on the host, once: the winners
    kernel's config, launcher and grid, and the gradient kernels' launchers, grids and
    doc splits. A call then allocates its outputs, reads its tensors' strides and
    launches; the memo lives in the lookup (``reset()`` forgets it) and is keyed by the
    spec, the device and every size the launches depend on."""

    def __init__(self, prep: Prepared, cfg: WinnersConfig):
        spec, k = prep.spec, prep.launch_kwargs
        q, d = prep.q, prep.d
        self.pairs = pairs = spec.layout == "pairs"
        self.packed = spec.layout == "packed"
        nq, nb = k["nq"], k["nb"]
        lq = (k["lq"] or longest(k["q_cu"])) if pairs else k["lq"]
        rows = lq if pairs else nq * lq
        ld = 0 if spec.layout in ("packed", "pairs") else int(d.shape[1])
        self.winners = winners_launcher(spec, cfg)
        self.idx_shape = (q.shape[0],) if pairs else (nb, nq * lq)
        # Each row's part of its score: [rows, docs], so that a query's rows sum to a
        # contiguous [nq, nb] (pairs: one per query row).
        self.val_shape = (q.shape[0],) if pairs else (nq * lq, nb)
        r_tiles = -(-rows // cfg.block_q)
        self.no_winners = nb == 0 or r_tiles == 0
        self.winners_grid = (r_tiles * nb, 1, 1)
        self.winners_ints = (nq, lq, ld, r_tiles)
        if pairs:
            return
        dim = q.shape[-1]
        m = nq * lq
        self.no_grads = m == 0 or nb == 0 or d.numel() == 0
        if self.no_grads:
            return
        dq_meta, dd_meta = grads_meta(spec, rows=m)
        self.dq = grads_launcher(spec, "dq", dq_meta)
        self.dd = grads_launcher(spec, "dd", dd_meta)
        # dq: split the docs where the row tiles alone leave the GPU idle: fp32 parts,
        # summed in order after (a few MB at most: DQ_PROGRAMS tiles' worth).
        tiles = -(-m // dq_meta["BLOCK_R"]) * -(-dim // dq_meta["BLOCK_K"])
        splits = max(1, min(DQ_PROGRAMS // tiles, -(-nb // (4 * dq_meta["BLOCK_B"]))))
        per = -(-nb // splits)
        self.per = -(-per // dq_meta["BLOCK_B"]) * dq_meta["BLOCK_B"]
        self.splits = -(-nb // self.per)
        self.dq_grid = (-(-m // dq_meta["BLOCK_R"]), -(-dim // dq_meta["BLOCK_K"]), self.splits)
        # dd: a program per doc-token tile and feature tile.
        ld_hint = ld or k["ld"]  # packed: the longest doc where the call gives it
        if self.packed and not ld_hint:
            ld_hint = -(-d.shape[0] // max(nb, 1))  # the mean doc: a program loops over a longer doc's tiles
        j_progs = max(1, -(-ld_hint // dd_meta["BLOCK_J"]))
        self.dd_grid = (j_progs * nb, -(-dim // dd_meta["BLOCK_K"]), 1)
        self.dd_ints = (nq, lq, ld, j_progs, m, m.bit_length() + 1)

    def find_winners(self, prep: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
        """(winners, each row's part of its score): see :func:`winners`."""
        k = prep.launch_kwargs
        q, d = prep.q, prep.d
        idx = torch.empty(self.idx_shape, dtype=torch.int32, device=q.device)
        val = torch.empty(self.val_shape, dtype=torch.float32, device=q.device)
        if self.no_winners:
            return idx.fill_(-1), val.zero_()
        extent = tuple(t if t is not None else d for t in (k.get("q_cu"), k.get("d_cu"), k.get("q_lengths"),
                                                            k.get("q_mask"), k.get("d_lengths"), k.get("d_mask")))
        flat_q = self.pairs
        flat_d = self.pairs or self.packed
        self.winners(self.winners_grid, (
            q, d, idx, val, *extent, *self.winners_ints,
            *((0, q.stride(0), q.stride(1)) if flat_q else q.stride()),
            *((0, d.stride(0), d.stride(1)) if flat_d else d.stride()),
            *_strides(k.get("q_mask")), *_strides(k.get("d_mask")),
            *((0, idx.stride(0)) if flat_q else idx.stride()),
            *((0, val.stride(0)) if flat_q else (val.stride(1), val.stride(0)))))
        return idx, val

    def scores(self, prep: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
        """(the call's scores in its launcher's shape, its winners): a training forward that
        keeps the winners for its backward (a query set against padded or packed docs)."""
        k = prep.launch_kwargs
        idx, val = self.find_winners(prep)
        return val.view(k["nq"], k["lq"], k["nb"]).sum(dim=1), idx

    def grads(self, prep: Prepared, idx: torch.Tensor, grad: torch.Tensor, need_q: bool,
              need_d: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        k = prep.launch_kwargs
        q, d = prep.q, prep.d
        packed = self.packed
        dq = torch.empty(q.shape, dtype=q.dtype, device=q.device) if need_q else None
        dd = (torch.zeros if packed else torch.empty)(d.shape, dtype=d.dtype, device=d.device) if need_d else None
        if self.no_grads:
            return (None if dq is None else dq.zero_()), (None if dd is None else dd.zero_())
        g = grad.to(torch.float32)
        d_cu = k["d_cu"] if packed else d  # padded docs: a pointer never read
        if need_q:
            d_strides = (0, d.stride(0), d.stride(1)) if packed else d.stride()
            if self.splits == 1:
                out, out_strides = dq, (0, *dq.stride())
            else:
                out = torch.empty((self.splits, *q.shape), dtype=torch.float32, device=q.device)
                out_strides = out.stride()
            self.dq(self.dq_grid, (d, idx, g, out, d_cu, k["nq"], k["lq"], k["nb"], self.per, *d_strides,
                                   *idx.stride(), *g.stride(), *out_strides))
            if self.splits > 1:
                dq.copy_(out.sum(dim=0))
            del out
        if need_d:
            # Each doc's winners in order (stable: a token's rows stay in row order), sorted in
            # place: dq, done, was their last other reader.
            rows = torch.empty(idx.shape, dtype=torch.int64, device=idx.device)
            won, rows = torch.sort(idx, dim=1, stable=True, out=(idx, rows))
            self.dd(self.dd_grid, (q, won, rows, g, dd, d_cu, *self.dd_ints, *q.stride(), *won.stride(),
                                   *rows.stride(), *g.stride(),
                                   *((0, dd.stride(0), dd.stride(1)) if packed else dd.stride())))
        return dq, dd


def _plan(prep: Prepared) -> _Plan:
    """The memoised backward plan of this call's shape (see :class:`_Plan`)."""
    from . import _api  # the dispatcher's lookup (which reset() replaces)

    k = prep.launch_kwargs
    q, d = prep.q, prep.d
    memo = _api._lookup.backward_plans
    key = (prep.spec, q.device, q.shape, d.shape, k["nq"], k["lq"], k["nb"], k["ld"], interpreting())
    plan = memo.get(key)
    if plan is None:
        plan = _Plan(prep, winners_decision(prep)[0])
        if k["lq"] or prep.spec.layout != "pairs":  # pairs without max_q_len: the longest query read back
            if len(memo) >= _api._PLAN_LIMIT:  # packed docs: a new total of tokens every batch
                memo.clear()
            memo[key] = plan
    return plan


def winners(prep: Prepared, cfg: WinnersConfig | None = None) -> torch.Tensor:
    """The winning doc token of every query row against every doc (``[nb, nq * lq]``;
    pairs: one per query row, ``[total_query_tokens]``), int32, -1 for none, from the
    generated winners kernel (``cfg``: the bucket's, tuned or the heuristic's)."""
    return (_Plan(prep, cfg) if cfg is not None else _plan(prep)).find_winners(prep)[0]


def winners_decision(prep: Prepared) -> tuple[WinnersConfig, str]:
    """The winners kernel's config for this call's bucket and its source (a tuned backward
    row of the databases, or the heuristic), decided once per bucket and lookup."""
    from . import _api  # the dispatcher's lookup (which reset() replaces)

    lookup = _api._lookup
    gpu = gpu_info(prep.q.device)
    key = dataclasses.replace(bucket_key(prep, gpu), op="bwd")
    memo = lookup.winners_memo
    decided = memo.get((prep.spec, key))
    if decided is None:
        decided = memo[(prep.spec, key)] = decide_winners(lookup, prep.spec, key, gpu, prep.sizes)
    return decided


def _strides(t: torch.Tensor | None) -> tuple[int, int]:
    return tuple(t.stride()) if t is not None else (0, 0)


def grads_from_winners(prep: Prepared, idx: torch.Tensor, grad: torch.Tensor, need_q: bool,
                       need_d: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(dq, dd) of a checked call from its winners (:func:`winners`): the generated gradient
    kernels for a query set against padded or packed docs, gathers and a scatter in torch
    for pairs. Neither reads anything back to the host (a CUDA graph can hold them)."""
    if prep.spec.layout == "pairs":
        return _pairs_grads(prep, idx, grad, need_q, need_d)
    return _plan(prep).grads(prep, idx, grad, need_q, need_d)


def _pairs_grads(prep: Prepared, idx: torch.Tensor, grad: torch.Tensor, need_q: bool,
                 need_d: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(dq, dd) of aligned pairs from their winners: one gather, one scatter; rows with no
    winner add to a spare row past the end, so nothing is selected on the host."""
    k = prep.launch_kwargs
    q, d = prep.q, prep.d
    work = _work_dtype(q)
    dim = q.shape[-1]
    if d.numel() == 0 or q.shape[0] == 0:
        return (torch.zeros_like(q) if need_q else None), (torch.zeros_like(d) if need_d else None)
    q_cu, d_cu = k["q_cu"].long(), k["d_cu"].long()
    pair = torch.repeat_interleave(torch.arange(k["nb"], device=q.device), q_cu[1:] - q_cu[:-1],
                                   output_size=q.shape[0])
    won = idx.long()
    has = won >= 0
    rows = torch.where(has, d_cu[pair] + won, d.shape[0])
    w = torch.where(has, grad.to(work)[pair], 0.0)
    dq = dd = None
    if need_q:
        picked = d[rows.clamp(max=d.shape[0] - 1)].to(work)
        dq = torch.where(has[:, None], w[:, None] * picked, 0.0).to(q.dtype)
    if need_d:
        spare = torch.zeros(d.shape[0] + 1, dim, dtype=work, device=d.device)
        spare.index_add_(0, rows, torch.where(has[:, None], w[:, None] * q.to(work), 0.0))
        dd = spare[:-1].to(d.dtype)
    return dq, dd


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
        ctx.save_for_backward(q, d)  # so that an in-place change before the backward is caught
        ctx.prep = prep
        ctx.q_shape, ctx.d_shape = q.shape, d.shape
        # Where kernels run, the winners kernel scores the call and its winners are kept
        # (int32, one per query row and doc): the backward launches only the gradients.
        kept = scores_keeping_winners(prep)
        if kept is None:
            ctx.idx = None
            return run(prep)
        out, ctx.idx = kept
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable  # a second derivative is refused, never wrong
    def backward(ctx, grad: torch.Tensor):
        ctx.saved_tensors  # noqa: B018 - raises if an input was changed in place since the forward
        prep = ctx.prep
        g = grad.unsqueeze(0) if prep.squeeze else grad
        need_q, need_d = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        # The kept winners serve one backward (it sorts them in place); another backward
        # of the same graph (retain_graph) finds them again.
        idx, ctx.idx = ctx.idx, None
        dq, dd = backward_scores(prep, g.contiguous(), need_q=need_q, need_d=need_d, idx=idx)
        dq = None if dq is None else dq.reshape(ctx.q_shape)
        dd = None if dd is None else dd.reshape(ctx.d_shape)
        return dq, dd, None, None


__all__ = ["Scores", "backward_scores", "needs_grad", "scores_keeping_winners"]
