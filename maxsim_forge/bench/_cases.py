"""What ``maxsim-forge bench`` times: the cases, their inputs, and each implementation's
call (torch eager, vLLM's vanilla algorithm, flash-maxsim, late-interaction-kernels and
maxsim-forge through its public API)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from ..codegen import torch_dtype
from ..reference import maxsim_packed_reference, maxsim_pairs_reference, maxsim_reference, valid_tokens


@dataclass(frozen=True, kw_only=True)
class Case:
    name: str
    layout: str  # padded | allpairs | packed | pairs
    nq: int = 1
    lq: int
    nb: int
    ld: int
    dim: int = 128
    dtype: str = "fp16"
    ragged: bool = False  # doc lengths below the padded length
    skew: bool = False  # packed: many short docs, few long ones

    def tiny(self) -> Case:
        return replace(self, nq=min(self.nq, 3), lq=min(self.lq, 8), nb=min(self.nb, 4), ld=min(self.ld, 24),
                       dim=min(self.dim, 32))


CASES = [
    Case(name="colbert-1k-fp16", layout="padded", lq=32, nb=1000, ld=300),
    Case(name="colbert-10k-fp16", layout="padded", lq=32, nb=10000, ld=300),
    Case(name="colbert-1k-bf16", layout="padded", lq=32, nb=1000, ld=300, dtype="bf16"),
    Case(name="colbert-10k-bf16", layout="padded", lq=32, nb=10000, ld=300, dtype="bf16"),
    Case(name="colpali-1k", layout="padded", lq=32, nb=1000, ld=1030),
    Case(name="image-query-1k", layout="padded", lq=1024, nb=1000, ld=1024),
    Case(name="ragged-4k", layout="padded", lq=32, nb=4000, ld=512, ragged=True),
    Case(name="16-queries-x-1k", layout="allpairs", nq=16, lq=32, nb=1000, ld=300),
    Case(name="pairs-64", layout="pairs", lq=32, nb=64, ld=300),
    Case(name="pairs-1k", layout="pairs", lq=32, nb=1000, ld=300),
    Case(name="packed-50k-skewed", layout="packed", lq=32, nb=50000, ld=512, skew=True),
    Case(name="colbert-10k-dim96", layout="padded", lq=32, nb=10000, ld=300, dim=96),
]


@dataclass
class Inputs:
    case: Case
    q: torch.Tensor  # [Lq, dim] or [Nq, Lq, dim]
    d: torch.Tensor | None = None  # padded docs
    d_lengths: torch.Tensor | None = None
    d_packed: torch.Tensor | None = None
    cu: torch.Tensor | None = None
    queries: list | None = None  # pairs
    docs: list | None = None

    def doc_tokens(self) -> int:
        """Valid doc tokens: what any implementation must read (padding excluded)."""
        if self.docs is not None:
            return sum(int(t.shape[0]) for t in self.docs)
        if self.d_packed is not None:
            return int(self.d_packed.shape[0])
        if self.d_lengths is not None:
            return int(self.d_lengths.clamp(0, self.case.ld).sum())
        return self.case.nb * self.case.ld

    def nbytes(self) -> int:
        """Bytes the work needs to move: the valid doc and query tokens read, the float32
        scores written."""
        c, esize = self.case, self.q.element_size()
        if self.docs is not None:
            q_tokens = sum(int(t.shape[0]) for t in self.queries)
            return (self.doc_tokens() + q_tokens) * c.dim * esize + 4 * len(self.docs)
        return (self.doc_tokens() + c.nq * c.lq) * c.dim * esize + 4 * c.nq * c.nb

    def flops(self) -> float:
        """Multiply-adds of every valid (query token, doc token) pair, as 2 flops each."""
        c = self.case
        if self.docs is not None:
            return float(sum(2 * q.shape[0] * d.shape[0] * c.dim for q, d in zip(self.queries, self.docs)))
        return 2.0 * c.nq * c.lq * self.doc_tokens() * c.dim


def reference_of(x: Inputs, *, absolute: bool = False) -> torch.Tensor:
    """The float64 scores of every output of a case (chunked), in the shape the
    implementations return: ``[B]``, ``[Nq, B]`` or ``[N]`` for pairs."""
    if x.queries is not None:
        return maxsim_pairs_reference(x.queries, x.docs, absolute=absolute)
    if x.d_packed is not None:
        return maxsim_packed_reference(x.q, x.d_packed, x.cu, absolute=absolute)
    return maxsim_reference(x.q, x.d, d_lengths=x.d_lengths, absolute=absolute)


def as_tensor(out) -> torch.Tensor:
    """An implementation's result as one tensor (vLLM's algorithm returns a list)."""
    return torch.stack(list(out)) if isinstance(out, (list, tuple)) else out


def make_inputs(case: Case, device: str, seed: int = 0) -> Inputs:
    g = torch.Generator().manual_seed(seed)
    dt = torch_dtype(case.dtype)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dt)

    if case.layout == "pairs":
        q_lens = torch.randint(max(1, case.lq // 2), case.lq + 1, (case.nb,), generator=g).tolist()
        d_lens = torch.randint(max(1, case.ld // 4), case.ld + 1, (case.nb,), generator=g).tolist()
        return Inputs(case, q=rand(1, case.dim), queries=[rand(n, case.dim) for n in q_lens],
                      docs=[rand(n, case.dim) for n in d_lens])
    q = rand(case.nq, case.lq, case.dim) if case.nq > 1 else rand(case.lq, case.dim)
    if case.layout == "packed":
        u = torch.rand(case.nb, generator=g)
        lens = (1 + (case.ld - 1) * (u.pow(3) if case.skew else u)).long()
        cu = torch.zeros(case.nb + 1, dtype=torch.int32)
        cu[1:] = lens.cumsum(0)
        return Inputs(case, q=q, d_packed=rand(int(cu[-1]), case.dim), cu=cu.to(device))
    lengths = None
    if case.ragged:
        lengths = torch.randint(1, case.ld + 1, (case.nb,), generator=g).to(device)
    return Inputs(case, q=q, d=rand(case.nb, case.ld, case.dim), d_lengths=lengths)


# ---- implementations: each returns a zero-argument callable, or None where it does not apply
def _doc_mask(x: Inputs) -> torch.Tensor | None:
    if x.d_lengths is None:
        return None
    return valid_tokens(x.d.shape[0], x.d.shape[1], x.d_lengths, None, x.d.device)


def _eager(x: Inputs):
    if x.d is None:
        return None
    mask = _doc_mask(x)

    def run():
        s = torch.einsum("...qk,btk->...bqt", x.q, x.d)
        if mask is not None:
            s = s.masked_fill(~mask[:, None, :], float("-inf"))
        return s.amax(-1).float().sum(-1)

    return run


def _vanilla(x: Inputs):
    from ..integrations import vanilla_maxsim_batched

    if x.queries is not None:
        return lambda: vanilla_maxsim_batched(x.queries, x.docs)
    if x.d is None or x.q.dim() != 2:
        return None
    lengths = x.d_lengths.tolist() if x.d_lengths is not None else [x.d.shape[1]] * x.d.shape[0]
    docs = [x.d[i, :n] for i, n in enumerate(lengths)]
    queries = [x.q] * len(docs)
    return lambda: vanilla_maxsim_batched(queries, docs)


def _flash(x: Inputs):
    import flash_maxsim as fm

    if x.queries is not None:
        return lambda: fm.flash_maxsim_pairs(x.queries, x.docs)
    if x.d_packed is not None:
        return None if x.q.dim() != 2 else (lambda: fm.flash_maxsim_packed(x.q, x.d_packed, x.cu))
    if x.q.dim() == 3:
        return lambda: fm.flash_maxsim_batched(x.q, x.d, x.d_lengths)
    return lambda: fm.flash_maxsim(x.q, x.d, x.d_lengths)


def _lik(x: Inputs):
    os.environ.setdefault("LIK_SUPPRESS_NORM_WARN", "1")
    import late_interaction_kernels as lik

    if x.queries is not None:
        return None
    if x.d_packed is not None:
        if x.q.dim() != 2:
            return None
        cu_q = torch.tensor([0, x.q.shape[0]], dtype=torch.int32, device=x.q.device)
        return lambda: lik.maxsim_varlen(x.q, x.d_packed, cu_q, x.cu)
    mask = _doc_mask(x)
    return lambda: lik.maxsim(x.q, x.d, d_mask=mask)


def _forge(x: Inputs):
    import maxsim_forge as mf

    if x.queries is not None:
        return lambda: mf.maxsim_pairs(x.queries, x.docs)
    if x.d_packed is not None:
        # Like the peers, no read-back of cu_seqlens values on the timed path.
        return lambda: mf.maxsim_packed(x.q, x.d_packed, x.cu, validate=False)
    return lambda: mf.maxsim(x.q, x.d, d_lengths=x.d_lengths, validate=False)


IMPLS: dict[str, Callable] = {
    "torch-eager": _eager,
    "vllm-vanilla": _vanilla,
    "flash-maxsim": _flash,
    "late-interaction-kernels": _lik,
    "maxsim-forge": _forge,
}
GPU_ONLY = {"flash-maxsim", "late-interaction-kernels"}


def resolve_impl(name: str) -> Callable:
    """An implementation by name: one of :data:`IMPLS`, or ``"module:function"`` for one
    of your own (a function of :class:`Inputs` that returns a zero-argument callable,
    or None where it does not take the case)."""
    if name in IMPLS:
        return IMPLS[name]
    module, _, attr = name.partition(":")
    if not module or not attr:
        raise ValueError(f"unknown implementation {name!r}; accepted: {', '.join(IMPLS)}, or module:function")
    import importlib

    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"implementation {name!r} cannot be loaded: {exc}") from None
