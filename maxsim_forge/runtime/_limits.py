"""The largest embedding dim the generated kernels take on a device.

A dim above 256 is split into feature tiles, each with buffers of its own in shared
memory (``codegen.smem_bytes``); with the smallest tiles (16 query and 16 doc tokens,
one pipeline stage) the dim can grow until those buffers fill the device's shared
memory per block: 3584 for fp16 and bf16, 1792 for fp32 with Hopper's 232448 bytes.
A call of a larger dim is scored by torch.
"""

from __future__ import annotations

import functools

from ..codegen import DEFAULT_SMEM_LIMIT, ConfigError, KernelSpec, validate
from ._heuristics import default_config

# Above any dim the kernels take on a device with a few MiB of shared memory per block.
_SEARCH_LIMIT = 1 << 16


def _fits(dtype: str, dim: int, smem_limit: int) -> bool:
    spec = KernelSpec("padded", dtype, dim)
    try:
        # The heuristic shrinks its tiles until they fit: the smallest one for a long dim.
        validate(spec, default_config(spec, nq=1, lq=16, nb=1, ld=16, smem_limit=smem_limit),
                 smem_limit=smem_limit)
    except ConfigError:
        return False
    return True


@functools.lru_cache(maxsize=64)
def largest_dim(dtype: str, smem_limit: int | None = None) -> int:
    """The largest dim a generated kernel of ``dtype`` takes with ``smem_limit`` bytes of
    shared memory per block (default: Hopper's); 0 if none fits."""
    limit = DEFAULT_SMEM_LIMIT if smem_limit is None else smem_limit
    low, high = 0, _SEARCH_LIMIT  # low fits (or is 0), high does not
    while high - low > 1:
        mid = (low + high) // 2
        if _fits(dtype, mid, limit):
            low = mid
        else:
            high = mid
    return low


def dim_error(dtype: str, dim: int, smem_limit: int | None = None) -> str | None:
    """Why a dim is too large for the kernels (naming the largest they take), or None."""
    most = largest_dim(dtype, smem_limit)
    if dim <= most:
        return None
    limit = DEFAULT_SMEM_LIMIT if smem_limit is None else smem_limit
    return (f"dim {dim} is above the largest the generated kernels take for {dtype} with {limit} bytes of "
            f"shared memory per block ({most}); larger dims are scored by torch")


__all__ = ["dim_error", "largest_dim"]
