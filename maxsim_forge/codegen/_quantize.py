"""The kernel that quantizes a query per token to int8 (``templates/quantize_rows.py.j2``):
one launch where torch takes about fifteen small operations, which a call with
``quantize_query=True`` pays every time. Rendered and built like the backward's kernels,
once per dim; its tiles follow from the dim."""

from __future__ import annotations

from ..templates import QUANTIZE_ROWS
from ._cache import load_source
from ._config import next_pow2
from ._launcher import Launcher, cached_launcher
from ._render import environment, interpreting

# Elements of a program's tile: rows of the dim rounded up to a power of two.
TILE = 4096
# The widest token the kernel takes in one tile (wider ones are quantized by torch).
MAX_DIM = 4096


def quantize_meta(dim: int) -> dict:
    """Compile-time arguments and launch options for tokens of ``dim`` features."""
    block_k = max(16, next_pow2(dim))
    return {"DIM": dim, "BLOCK_R": max(1, TILE // block_k), "BLOCK_K": block_k,
            "num_warps": 4 if block_k >= 256 else 2}


def render_quantize(dim: int) -> str:
    if type(dim) is not int or not 1 <= dim <= MAX_DIM:
        raise ValueError(f"dim={dim!r}: the quantize kernel takes 1 to {MAX_DIM} features")
    return environment().get_template(QUANTIZE_ROWS).render(TEMPLATE=QUANTIZE_ROWS, VARIANT=f"int8-dim{dim}")


def quantize_launcher(dim: int) -> Launcher:
    """The int8 quantize kernel for tokens of ``dim`` features, built on first use."""
    return cached_launcher(("quantize", dim, interpreting()),
                           lambda: load_source(render_quantize(dim))._quantize_rows_kernel, quantize_meta(dim))


__all__ = ["MAX_DIM", "quantize_launcher", "quantize_meta", "render_quantize"]
