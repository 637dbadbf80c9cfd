"""Kernel variants: config dataclasses, validation, rendering and the module cache."""

from __future__ import annotations

from ._cache import cache_dir, load_source, load_variant
from ._config import (
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
    validate,
)
from ._render import (
    environment,
    interpreting,
    is_current,
    kernel_hash,
    render,
    source_key,
    template_hash,
    variant_name,
)

__all__ = [
    "DTYPES",
    "LAYOUTS",
    "MASK_KINDS",
    "Q_MODES",
    "ConfigError",
    "KernelConfig",
    "KernelSpec",
    "cache_dir",
    "environment",
    "exact_k_fits",
    "interpreting",
    "is_current",
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
    "validate",
    "variant_name",
]
