"""Spec + config -> the values a template sees -> rendered kernel source."""

from __future__ import annotations

import functools
import hashlib
import os

import jinja2

from ..templates import MAXSIM_FWD, TEMPLATE_DIR
from ._config import MASK_KINDS, ConfigError, KernelConfig, KernelSpec, k_chunks, num_k_chunks, validate

_TORCH_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
_SHAPES = {
    "padded": "q [nq, lq, dim], d [nb, ld, dim]",
    "allpairs": "q [nq, lq, dim], d [nb, ld, dim]",
    "packed": "q [nq, lq, dim], d [total_doc_tokens, dim] with d_cu [nb + 1]",
    "pairs": "q [total_query_tokens, dim] with q_cu [nb + 1], d [total_doc_tokens, dim] with d_cu [nb + 1]",
}
# Rows per step of the split-doc reduction kernel, and its warps: it reads a few KB.
_REDUCE_BLOCK_R = 64
_REDUCE_WARPS = 4
# Queries per step of the folded one-tile store (a [block_q, 32] one-hot sum).
_STORE_N = 32


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The one Jinja environment: strict about undefined names, no autoescape."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def template_values(spec: KernelSpec, cfg: KernelConfig, *, interpret: bool | None = None) -> dict:
    """Every value the template needs, derived here so the template does no arithmetic.

    ``interpret`` renders for Triton's interpreter (default: whether it is on)."""
    dtype = spec.dtype
    interpret = interpreting() if interpret is None else interpret
    chunks = k_chunks(spec, cfg) if cfg.exact_k else []
    return {
        "VARIANT": variant_name(spec, cfg),
        "LAYOUT": spec.layout,
        "DIM": spec.dim,
        "BLOCK_Q": cfg.block_q,
        "BLOCK_D": cfg.block_d,
        "BLOCK_K": cfg.block_k,
        "NUM_K": num_k_chunks(spec, cfg),
        "SPLIT_K": num_k_chunks(spec, cfg) > 1,
        "EXACT_K": cfg.exact_k,
        "OVERLAP_MAX": cfg.overlap_max,
        "MASKED_LOOP": cfg.masked_loop,
        "DEFER_MAX": cfg.defer_max,
        "PERSIST": cfg.q_mode == "persist",
        "K_CHUNKS": chunks,
        # The query tile(s) held in registers and passed to each doc tile.
        "Q_ARGS": ", ".join(f"q{i}" for i in range(len(chunks))) if chunks else "q",
        "EVEN_K": spec.dim % cfg.block_k == 0,
        "NUM_WARPS": cfg.num_warps,
        "NUM_STAGES": cfg.num_stages,
        "SPLIT_D": cfg.split_d,
        "SPLIT": cfg.split_d > 1,
        "BLOCK_R": _REDUCE_BLOCK_R,
        "REDUCE_WARPS": _REDUCE_WARPS,
        "Q_MODE": cfg.q_mode,
        "Q_PER_PAIR": spec.layout == "pairs",
        "D_PACKED": spec.layout in ("packed", "pairs"),
        "Q_MASK": spec.q_mask,
        "D_MASK": spec.d_mask,
        "TORCH_DTYPE": _TORCH_DTYPES[dtype],
        # fp32 inputs pick tf32 or exact ieee products; half types use the native dot.
        "INPUT_PRECISION": spec.precision if dtype == "fp32" else "",
        # Triton's interpreter multiplies bf16 tiles wrongly (triton 3.9): there, bf16
        # operands go to fp32 first, which is exact (bf16 x bf16 fits fp32's mantissa).
        "UPCAST_DOT": dtype == "bf16" and interpret,
        # Atomic sums need a zeroed output; a split or a plain store writes every slot.
        "ZERO_INIT": cfg.q_mode in ("grid", "persist") and cfg.split_d == 1,
        # Straight-line tiles store a one-tile query's score, and folded rows that fit one
        # tile store each query's sum; several tiles add with atomics, so the output is
        # zeroed only where there are several. (The persistent grid keeps its atomics: a
        # loop over the queries inside its doc loop would keep that loop from pipelining.)
        "ZERO_IF_TILES": cfg.q_mode in ("tile", "fold") and cfg.split_d == 1,
        # Queries whose sums one step of the folded one-tile store takes.
        "STORE_N": min(cfg.block_q, _STORE_N),
        "SHAPES_DOC": _SHAPES[spec.layout],
    }


def variant_name(spec: KernelSpec, cfg: KernelConfig) -> str:
    return f"{spec.key()}.{cfg.key()}"


def render(
    spec: KernelSpec,
    cfg: KernelConfig,
    *,
    smem_limit: int | None = None,
    env: jinja2.Environment | None = None,
) -> str:
    """Validate, then render the variant's module source."""
    validate(spec, cfg, smem_limit=smem_limit)
    template = (env or environment()).get_template(MAXSIM_FWD)
    return template.render(**template_values(spec, cfg))


@functools.lru_cache(maxsize=8)
def template_hash(env: jinja2.Environment | None = None) -> str:
    """Hash of the template text: stored with every tuned result, so an edit invalidates it."""
    env = env or environment()
    source, _, _ = env.loader.get_source(env, MAXSIM_FWD)
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def kernel_hash(layout: str, dtype: str, dim: int, precision: str, cfg: KernelConfig,
                env: jinja2.Environment | None = None) -> str:
    """Hash of the kernels a tuned config runs: the variant rendered for the GPU with
    every mask kind its layout takes, comments and blank lines left out.

    A tuned winner stores it; the winner stays valid for as long as this hash is
    unchanged, so a template edit that leaves a variant's code as it was (a new knob
    whose default renders the old code, a comment) keeps the databases tuned before it.
    """
    if env is None:
        return _kernel_hash(layout, dtype, dim, precision, cfg)
    return _kernel_hash.__wrapped__(layout, dtype, dim, precision, cfg, env)


@functools.lru_cache(maxsize=4096)
def _kernel_hash(layout: str, dtype: str, dim: int, precision: str, cfg: KernelConfig,
                 env: jinja2.Environment | None = None) -> str:
    template = (env or environment()).get_template(MAXSIM_FWD)
    digest = hashlib.sha256()
    for q_mask in MASK_KINDS:
        for d_mask in MASK_KINDS:
            spec = KernelSpec(layout, dtype, dim, precision, q_mask, d_mask)
            try:
                spec.validate()
            except ConfigError:
                continue  # a mask kind this layout does not take
            source = template.render(**template_values(spec, cfg, interpret=False))
            for line in source.splitlines():
                line = line.rstrip()
                if line and not line.lstrip().startswith("#"):
                    digest.update(line.encode() + b"\n")
            digest.update(b"\f")
    return digest.hexdigest()[:16]


def is_current(row: dict) -> bool:
    """Whether a tuned database row still describes the kernels this package generates:
    by its kernel hash, or, for rows stored before kernel hashes, by the template's."""
    stored = row.get("kernel_hash")
    if not stored:
        return row.get("template_hash") == template_hash()
    try:
        cfg = row["config"]
        cfg = KernelConfig.from_dict(cfg) if isinstance(cfg, dict) else cfg
        return stored == kernel_hash(row["layout"], row["dtype"], row["dim"], row["precision"], cfg)
    except (ConfigError, TypeError, KeyError):
        return False


def source_key(source: str) -> str:
    """Content hash of rendered source: the name of its cache file."""
    return hashlib.sha256(source.encode()).hexdigest()[:20]
