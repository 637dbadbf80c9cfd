"""Kernel variants: config dataclasses, validation, rendering, launch plans and the module cache."""

from __future__ import annotations

from ._cache import CacheError, cache_dir, load_source, load_variant
from ._config import (
    DEFAULT_SMEM_LIMIT,
    DTYPES,
    LAYOUTS,
    MASK_KINDS,
    Q_MODES,
    ConfigError,
    KernelConfig,
    KernelSpec,
    exact_k_fits,
    next_pow2,
    partial_doc_tiles,
    query_programs,
    registers_per_thread,
    smem_bytes,
    torch_dtype,
    validate,
)
from ._plan import LAUNCH_REVISION, zeroed_output
from ._render import (
    environment,
    family,
    interpreting,
    is_current,
    jit_kernels,
    kernel_hash,
    render,
    source_key,
    template_hash,
    variant_name,
)
from ._variant import Variant

__all__ = [
    "DEFAULT_SMEM_LIMIT",
    "DTYPES",
    "LAUNCH_REVISION",
    "LAYOUTS",
    "MASK_KINDS",
    "Q_MODES",
    "CacheError",
    "ConfigError",
    "KernelConfig",
    "KernelSpec",
    "Variant",
    "cache_dir",
    "environment",
    "exact_k_fits",
    "family",
    "interpreting",
    "is_current",
    "jit_kernels",
    "kernel_hash",
    "load_source",
    "load_variant",
    "next_pow2",
    "partial_doc_tiles",
    "query_programs",
    "registers_per_thread",
    "render",
    "smem_bytes",
    "source_key",
    "template_hash",
    "torch_dtype",
    "validate",
    "variant_name",
    "zeroed_output",
]
