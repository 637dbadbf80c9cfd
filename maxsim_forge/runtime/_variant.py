"""Run one given variant (spec from the call, config from the caller) on given tensors."""

from __future__ import annotations

import torch

from ..codegen import KernelConfig, interpreting, load_variant
from .._inputs import Prepared


def launch_prepared(
    prep: Prepared,
    cfg: KernelConfig,
    *,
    out: torch.Tensor | None = None,
    smem_limit: int | None = None,
) -> torch.Tensor:
    """Launch ``cfg`` on a checked call; float32 scores in the call's shape.

    ``out``, when given, has the launcher's shape (``[nq, nb]``, or ``[nb]`` for pairs).
    """
    if prep.q.device.type == "cpu" and not interpreting():
        raise ValueError(
            "q is a CPU tensor: generated kernels run on CUDA tensors, or on CPU tensors "
            "under Triton's interpreter (set TRITON_INTERPRET=1 before importing triton)"
        )
    variant = load_variant(prep.spec, cfg, smem_limit=smem_limit)
    out = variant.launch(prep.q, prep.d, out=out, **prep.launch_kwargs)
    return out[0] if prep.squeeze else out
