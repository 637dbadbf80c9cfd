"""A drop-in for vLLM's late-interaction scorer, and vLLM-format tuned configs.

    from maxsim_forge.integrations import vllm as mf_vllm
    mf_vllm.install()      # vLLM's /score and /rerank now score through maxsim-forge

``compute_maxsim_score_batched`` keeps the signature and contract of vLLM's function of
that name, but scores every pair in one packed launch: the two size arguments are
accepted for compatibility and do not force mini-batches. One difference: a doc with
no tokens scores 0 here (vLLM's padded algorithm gives -inf).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import torch

from .._keys import DTYPE_NAMES
from ..runtime import maxsim_pairs
from ._vllm_configs import export_vllm, import_vllm, read_vllm_config, vllm_rows

__all__ = [
    "compute_maxsim_score_batched",
    "export_vllm",
    "import_vllm",
    "install",
    "read_vllm_config",
    "uninstall",
    "vllm_rows",
]

def _check(q_embs: Sequence[torch.Tensor], d_embs: Sequence[torch.Tensor]) -> None:
    for i, (q, d) in enumerate(zip(q_embs, d_embs)):
        for name, t in (("q_embs", q), ("d_embs", d)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}[{i}] must be a torch.Tensor, got {type(t).__name__}")
            if t.ndim != 2:
                raise ValueError(f"Each embedding tensor must be 2-D: {name}[{i}] has shape {tuple(t.shape)}")
            if not t.is_floating_point():
                raise TypeError(f"{name}[{i}] has dtype {t.dtype}; a floating-point dtype is needed")
        if q.shape[1] != d.shape[1]:
            raise ValueError(
                f"Query and document embeddings must have same dim: pair {i} has {q.shape[1]} and {d.shape[1]}"
            )
        if q.device != d.device:
            raise ValueError(
                f"Query and document embeddings must be on same device: pair {i} has {q.device} and {d.device}"
            )


def compute_maxsim_score_batched(
    q_embs: Sequence[torch.Tensor],
    d_embs: Sequence[torch.Tensor],
    max_batch_size: int = 64,
    max_score_matrix_elements: int = 64_000_000,
) -> list[torch.Tensor]:
    """MaxSim of query i against doc i for every pair: a list of 0-d float32 tensors.

    Any float dtypes (fp16/bf16 score natively, products exact in fp32; fp32 in exact
    ieee fp32, as vLLM's fp32 ``bmm``; others are cast to fp32). Pairs on several
    devices are scored one launch per device.
    """
    if len(q_embs) != len(d_embs):
        raise ValueError(
            f"q_embs and d_embs must have the same length: got {len(q_embs)} and {len(d_embs)}"
        )
    if len(q_embs) == 0:
        return []
    if max_batch_size <= 0:
        raise ValueError(f"max_batch_size must be greater than 0, got {max_batch_size}")
    if max_score_matrix_elements <= 0:
        raise ValueError(f"max_score_matrix_elements must be greater than 0, got {max_score_matrix_elements}")
    first = q_embs[0]
    if isinstance(first, torch.Tensor) and first.dtype in DTYPE_NAMES:  # a dtype the kernels take
        try:  # the common case: one dtype, one device; checked once while packing
            return list(_score(q_embs, d_embs, first.dtype).unbind(0))
        except (ValueError, TypeError):
            pass  # mixed dtypes or devices, or bad input: the careful path names it
    q_embs, d_embs = list(q_embs), list(d_embs)
    _check(q_embs, d_embs)
    dtypes = {t.dtype for t in q_embs} | {t.dtype for t in d_embs}
    devices = {t.device for t in q_embs}
    dtype = _common_dtype(dtypes)
    out: list[torch.Tensor | None] = [None] * len(q_embs)
    for device in devices:
        idx = [i for i, q in enumerate(q_embs) if q.device == device]
        qs = [q_embs[i].to(dtype) for i in idx]
        ds = [d_embs[i].to(dtype) for i in idx]
        for i, s in zip(idx, _score(qs, ds, dtype).unbind(0)):
            out[i] = s
    return out


def _common_dtype(dtypes: set[torch.dtype]) -> torch.dtype:
    if dtypes <= {torch.float16}:
        return torch.float16
    if dtypes <= {torch.bfloat16}:
        return torch.bfloat16
    return torch.float32


def _score(qs: list[torch.Tensor], ds: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    precision = "ieee" if dtype == torch.float32 else "tf32"
    return maxsim_pairs(qs, ds, precision=precision)


# ---- replacing vLLM's function
_TARGETS = ("vllm.v1.pool.late_interaction", "vllm.v1.pool.late_interaction_runner")
_saved: dict[str, object] = {}


def install() -> list[str]:
    """Replace vLLM's ``compute_maxsim_score_batched`` (in its module and where its runner
    imported it) with this one; returns the modules patched."""
    try:
        importlib.import_module(_TARGETS[0])
    except ImportError as exc:
        raise RuntimeError(
            f"vLLM is not importable ({exc}); install vllm first, or call "
            "maxsim_forge.integrations.vllm.compute_maxsim_score_batched directly"
        ) from exc
    patched = []
    for name in _TARGETS:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if not hasattr(module, "compute_maxsim_score_batched"):
            continue
        _saved.setdefault(name, module.compute_maxsim_score_batched)
        module.compute_maxsim_score_batched = compute_maxsim_score_batched
        patched.append(name)
    return patched


def uninstall() -> list[str]:
    """Put vLLM's own function back where :func:`install` replaced it."""
    restored = []
    for name, original in list(_saved.items()):
        module = importlib.import_module(name)
        module.compute_maxsim_score_batched = original
        restored.append(name)
        del _saved[name]
    return restored
