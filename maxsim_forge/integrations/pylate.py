"""PyLate's scoring functions, scored by maxsim-forge and differentiable.

    from maxsim_forge.integrations import pylate as mf_pylate
    mf_pylate.install()   # pylate.scores.colbert_scores (and the others) now score here

``colbert_scores``, ``colbert_scores_pairwise`` and ``colbert_kd_scores`` take PyLate's
arguments and give PyLate's results, gradients included. One rule differs from
maxsim-forge's own and is PyLate's here: PyLate multiplies the similarity matrix by its
masks, so a masked document token is not removed but scores 0, and wins a query token
whose every real similarity is negative. These functions keep that rule by scoring the
masked tokens as zero vectors (a copy of the embeddings times the mask); a masked query
token adds 0 either way. Float masks of 0 and 1 and boolean masks are both taken. The
``backend`` argument is accepted and ignored: this is the backend.

pylate itself is not a dependency, and no ``[pylate]`` extra is offered: pylate 1.6.0
needs fast-plaid, whose releases it accepts pin ``torch==2.11.0`` exactly (fast-plaid
1.4.6.2110), which would replace the pinned torch 2.13.0 with a CUDA build of several GB.
The tests check these functions against PyLate's documented examples and its torch
formulas, not against an installed pylate.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import numpy as np
import torch

from ..runtime import maxsim, maxsim_pairs_packed

__all__ = ["colbert_kd_scores", "colbert_scores", "colbert_scores_pairwise", "install", "uninstall"]


def _tensor(name: str, x) -> torch.Tensor:
    """A tensor as PyLate takes it: tensors as they are, lists of tensors stacked, arrays
    and lists of numbers as float32."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, Sequence) and x and all(isinstance(t, torch.Tensor) for t in x):
        return torch.stack(list(x))
    try:
        return torch.as_tensor(np.asarray(x), dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a tensor, a list of tensors or an array; got {type(x).__name__}") from None


def _masked(name: str, x: torch.Tensor, mask, shape: tuple) -> torch.Tensor:
    """``x`` with its masked tokens zeroed (PyLate's rule: they score 0)."""
    if mask is None:
        return x
    mask = _tensor(f"{name}_mask", mask).to(x.device)
    try:  # PyLate multiplies: a mask that broadcasts to the tokens is taken
        mask = torch.broadcast_to(mask, shape)
    except RuntimeError:
        raise ValueError(f"{name}_mask has shape {tuple(mask.shape)}; expected {shape} (or one that "
                         "broadcasts to it)") from None
    return x * mask.to(x.dtype)[..., None]


def _float(x: torch.Tensor, name: str) -> torch.Tensor:
    if not x.is_floating_point():
        raise TypeError(f"{name} has dtype {x.dtype}; a floating-point dtype is needed")
    return x


def colbert_scores(queries_embeddings, documents_embeddings, queries_mask=None, documents_mask=None,
                   backend: str | None = None) -> torch.Tensor:
    """Every query against every document: ``[A, s, h]`` x ``[B, t, h]`` -> ``[A, B]``."""
    q = _float(_tensor("queries_embeddings", queries_embeddings), "queries_embeddings")
    d = _float(_tensor("documents_embeddings", documents_embeddings), "documents_embeddings")
    if q.dim() != 3 or d.dim() != 3:
        raise ValueError(f"queries_embeddings {tuple(q.shape)} and documents_embeddings {tuple(d.shape)} "
                         "must be [batch, tokens, dim]")
    q = _masked("queries", q, queries_mask, tuple(q.shape[:2]))
    d = _masked("documents", d, documents_mask, tuple(d.shape[:2]))
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    return maxsim(q, d, precision=precision)


def colbert_scores_pairwise(queries_embeddings, documents_embeddings, backend: str | None = None) -> torch.Tensor:
    """Query i against document i: ``[N, s, h]`` and ``[N, t, h]`` (or lists of ``[s_i, h]``
    and ``[t_i, h]``) -> ``[N]``."""
    qs = [queries_embeddings[i] for i in range(len(queries_embeddings))]
    ds = [documents_embeddings[i] for i in range(len(documents_embeddings))]
    if len(qs) != len(ds):
        raise ValueError(f"{len(qs)} queries but {len(ds)} documents; pairs need as many of each")
    if not qs:
        return torch.zeros(0)
    q = _float(torch.cat([_tensor("queries_embeddings", x) for x in qs]), "queries_embeddings")
    d = _float(torch.cat([_tensor("documents_embeddings", x) for x in ds]), "documents_embeddings")
    q_cu = _offsets([x.shape[0] for x in qs], q.device)
    d_cu = _offsets([x.shape[0] for x in ds], d.device)
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    return maxsim_pairs_packed(q, q_cu, d, d_cu, max_q_len=max(x.shape[0] for x in qs),
                               max_d_len=max(x.shape[0] for x in ds), precision=precision)


def colbert_kd_scores(queries_embeddings, documents_embeddings, queries_mask=None, documents_mask=None,
                      backend: str | None = None) -> torch.Tensor:
    """Each query against its own candidates: ``[A, s, h]`` x ``[A, B, t, h]`` -> ``[A, B]``."""
    q = _float(_tensor("queries_embeddings", queries_embeddings), "queries_embeddings")
    d = _float(_tensor("documents_embeddings", documents_embeddings), "documents_embeddings")
    if q.dim() != 3 or d.dim() != 4 or d.shape[0] != q.shape[0]:
        raise ValueError(f"queries_embeddings {tuple(q.shape)} must be [A, s, h] and documents_embeddings "
                         f"{tuple(d.shape)} [A, B, t, h]")
    q = _masked("queries", q, queries_mask, tuple(q.shape[:2]))
    d = _masked("documents", d, documents_mask, tuple(d.shape[:3]))
    a, b, t, h = d.shape
    s = q.shape[1]
    if a * b == 0:
        return torch.zeros(a, b, dtype=torch.float64 if q.dtype == torch.float64 else torch.float32,
                           device=q.device)
    pairs_q = q[:, None].expand(a, b, s, h).reshape(a * b * s, h)  # query a beside each of its candidates
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    out = maxsim_pairs_packed(pairs_q, _offsets([s] * (a * b), q.device), d.reshape(a * b * t, h),
                              _offsets([t] * (a * b), q.device), max_q_len=s, max_d_len=t, precision=precision)
    return out.view(a, b)


def _offsets(lengths: list[int], device) -> torch.Tensor:
    total = sum(lengths)
    cu = torch.tensor([0, *lengths], dtype=torch.int64).cumsum(0)
    return cu.to(device=device, dtype=torch.int32 if total < 2**31 else torch.int64)


# ---- replacing PyLate's functions
_TARGETS = ("pylate.scores", "pylate.scores.colbert", "pylate.scores.scores")
_NAMES = ("colbert_scores", "colbert_scores_pairwise", "colbert_kd_scores")
_saved: dict[tuple[str, str], object] = {}


def install() -> list[str]:
    """Replace PyLate's three scoring functions where its modules define or re-export them;
    returns the ``module.name`` patched. Objects that took a function before (a loss's
    default ``score_metric``) keep it: pass this module's function to them."""
    try:
        importlib.import_module(_TARGETS[0])
    except ImportError as exc:
        raise RuntimeError(f"pylate is not importable ({exc}); install pylate first, or call "
                           "maxsim_forge.integrations.pylate.colbert_scores directly") from exc
    patched = []
    for module_name in _TARGETS:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for name in _NAMES:
            if hasattr(module, name):
                _saved.setdefault((module_name, name), getattr(module, name))
                setattr(module, name, globals()[name])
                patched.append(f"{module_name}.{name}")
    return patched


def uninstall() -> list[str]:
    """Put PyLate's own functions back where :func:`install` replaced them."""
    restored = []
    for (module_name, name), original in list(_saved.items()):
        setattr(importlib.import_module(module_name), name, original)
        restored.append(f"{module_name}.{name}")
        del _saved[(module_name, name)]
    return restored
