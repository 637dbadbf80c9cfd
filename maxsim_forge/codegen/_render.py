"""Spec + config -> the values a template sees -> rendered kernel source, and the hashes
that say whether a tuned row still runs the kernels it was timed with."""

from __future__ import annotations

import ast
import functools
import hashlib
import os

import jinja2

from ..templates import FWD_FOLDED, FWD_QUERY, TEMPLATE_DIR
from ._config import MASK_KINDS, ConfigError, KernelConfig, KernelSpec, k_chunks, num_k_chunks, validate
from ._plan import LAUNCH_REVISION, launch_meta

# Queries per step of the folded one-tile store (a [block_q, 32] one-hot sum).
_STORE_N = 32
_TL_TYPES = {"fp16": "tl.float16", "bf16": "tl.bfloat16", "fp32": "tl.float32"}


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The one Jinja environment: strict about undefined names, no autoescape, block tags
    that leave no blank lines or stray indentation behind."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def family(cfg: KernelConfig) -> str:
    """The template of a config's kernel family: folded query sets, or one query at a time."""
    return FWD_FOLDED if cfg.q_mode in ("fold", "persist") else FWD_QUERY


def template_values(spec: KernelSpec, cfg: KernelConfig, *, interpret: bool | None = None) -> dict:
    """Every value the templates need, derived here so the templates do no arithmetic.

    ``interpret`` renders for Triton's interpreter (default: whether it is on)."""
    interpret = interpreting() if interpret is None else interpret
    # Exact feature tiles: the name of each one's query tile, its first feature, its width.
    chunks = [(f"q{i}", off, width) for i, (off, width) in enumerate(k_chunks(spec, cfg))] if cfg.exact_k else []
    split_k = num_k_chunks(spec, cfg) > 1
    # The query tile(s) held in registers and passed to each doc tile.
    q_args = [name for name, _, _ in chunks] or ["q"]
    upcast = spec.dtype == "bf16" and interpret and not spec.query_codes
    return {
        "TEMPLATE": family(cfg),
        "VARIANT": variant_name(spec, cfg),
        "SPLIT_K": split_k,
        "Q_ARG_LIST": "" if split_k else ", ".join(q_args) + ", ",
        "EXACT_K": cfg.exact_k,
        "K_CHUNKS": chunks,
        "EVEN_K": spec.dim % cfg.block_k == 0,
        "OVERLAP_MAX": cfg.overlap_max,
        "MASKED_LOOP": cfg.masked_loop,
        "DEFER_MAX": cfg.defer_max,
        # The helper that returns a whole score tile: for the loops that take the row max later.
        "SCORE_TILES": cfg.overlap_max or cfg.defer_max or cfg.q_mode == "persist",
        "PERSIST": cfg.q_mode == "persist",
        "SPLIT": cfg.split_d > 1,
        "Q_MODE": cfg.q_mode,
        "Q_PER_PAIR": spec.layout == "pairs",
        "D_PACKED": spec.layout in ("packed", "pairs"),
        "Q_MASK": spec.q_mask,
        "D_MASK": spec.d_mask,
        # fp32 inputs pick tf32 or exact ieee products; half types use the native dot.
        "INPUT_PRECISION": spec.precision if spec.dtype == "fp32" and not spec.query_codes else "",
        # Triton's interpreter multiplies bf16 tiles wrongly (triton 3.9): there, bf16
        # operands go to fp32 first, which is exact (bf16 x bf16 fits fp32's mantissa).
        "UPCAST_DOT": upcast,
        # Quantized docs: per-token scales (CODES); the query's too where it is quantized
        # (Q_SCALED), whose int8 dot accumulates in int32 (ACC).
        "CODES": spec.codes != "none",
        "Q_SCALED": spec.query_codes is not None,
        "ACC": "tl.int32" if spec.query_codes == "int8" else "tl.float32",
        # What a doc tile becomes before its dot: codes dequantized in registers to the
        # query's dtype (their values are exact in fp16, bf16 and fp32), or bf16 upcast.
        "DOC_TO": "tl.float32" if upcast else _TL_TYPES[spec.dtype] if spec.doc_codes and not spec.query_codes
                  else "",
        # Queries whose sums one step of the folded one-tile store takes.
        "STORE_N": min(cfg.block_q, _STORE_N),
    }


def variant_name(spec: KernelSpec, cfg: KernelConfig) -> str:
    return f"{spec.key()}.{cfg.key()}"


def _render(spec: KernelSpec, cfg: KernelConfig, *, interpret: bool | None = None,
            env: jinja2.Environment | None = None) -> str:
    template = (env or environment()).get_template(family(cfg))
    return template.render(**template_values(spec, cfg, interpret=interpret))


def render(
    spec: KernelSpec,
    cfg: KernelConfig,
    *,
    smem_limit: int | None = None,
    interpret: bool | None = None,
    env: jinja2.Environment | None = None,
) -> str:
    """Validate, then render the variant's kernel module source."""
    validate(spec, cfg, smem_limit=smem_limit)
    return _render(spec, cfg, interpret=interpret, env=env)


@functools.lru_cache(maxsize=8)
def template_hash(env: jinja2.Environment | None = None) -> str:
    """Hash of every template's text: studies are named by it, and rows stored before
    kernel hashes are judged by it."""
    env = env or environment()
    digest = hashlib.sha256()
    for name in sorted(env.list_templates(extensions=["j2"])):
        source, _, _ = env.loader.get_source(env, name)
        digest.update(name.encode() + b"\0" + source.encode() + b"\f")
    return digest.hexdigest()[:16]


def jit_kernels(source: str) -> list[str]:
    """The ``@triton.jit`` functions of a rendered module, each as its syntax tree dumped
    without positions: comments, blank lines and layout leave it unchanged, and so does the
    Python that reads it (:func:`_dump`)."""
    dumps = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef):
            for decorator in node.decorator_list:
                target = decorator.func if isinstance(decorator, ast.Call) else decorator
                if ast.unparse(target) == "triton.jit":
                    dumps.append(_dump(node))
    return dumps


def _dump(node) -> str:
    """A syntax tree as text that is the same on every Python: fields holding None or an
    empty list are left out (``ast.dump``'s text differs between versions: 3.12 added
    ``FunctionDef.type_params``, 3.13 leaves empty lists out), positions too."""
    if isinstance(node, ast.AST):
        fields = ((name, getattr(node, name, None)) for name in node._fields)
        inner = ", ".join(f"{name}={_dump(value)}" for name, value in fields if value is not None and value != [])
        return f"{type(node).__name__}({inner})"
    if isinstance(node, list):
        return "[" + ", ".join(_dump(value) for value in node) + "]"
    return repr(node)


def kernel_hash(layout: str, dtype: str, dim: int, precision: str, cfg: KernelConfig,
                env: jinja2.Environment | None = None, *, codes: str = "none") -> str:
    """Hash of the kernels a tuned config runs and how they are launched: the layout,
    dtype, dim, precision and codes (the kernels' pointer types come from the call), the syntax
    tree of every ``@triton.jit`` function of the variant rendered for the GPU with each
    mask kind its layout takes, the launch meta-parameters and the launch revision.

    A tuned winner stores it; the winner stays valid for as long as this hash is
    unchanged, so an edit that leaves a variant's kernels as they were (a new knob whose
    default renders the old code, a comment, a template split) keeps the databases tuned
    before it.
    """
    if env is None:
        return _kernel_hash(layout, dtype, dim, precision, cfg, None, codes)
    return _kernel_hash.__wrapped__(layout, dtype, dim, precision, cfg, env, codes)


@functools.lru_cache(maxsize=4096)
def _kernel_hash(layout: str, dtype: str, dim: int, precision: str, cfg: KernelConfig,
                 env: jinja2.Environment | None = None, codes: str = "none") -> str:
    # Float docs keep the head they were hashed with before codes existed.
    coded = "" if codes == "none" else f" {codes}"
    head = f"{layout} {dtype} {dim} {precision}{coded}; launch {LAUNCH_REVISION} {sorted(launch_meta(cfg).items())}\f"
    digest = hashlib.sha256(head.encode())
    for q_mask in MASK_KINDS:
        for d_mask in MASK_KINDS:
            spec = KernelSpec(layout, dtype, dim, precision, q_mask, d_mask, codes)
            try:
                spec.validate()
            except ConfigError:
                continue  # a mask kind this layout does not take
            for kernel in jit_kernels(_render(spec, cfg, interpret=False, env=env)):
                digest.update(kernel.encode() + b"\n")
            digest.update(b"\f")
    return digest.hexdigest()[:16]


def is_current(row: dict) -> bool:
    """Whether a tuned database row still describes the kernels this package generates:
    by its kernel hash, or, for rows stored before kernel hashes, by the templates'."""
    stored = row.get("kernel_hash")
    if not stored:
        return row.get("template_hash") == template_hash()
    try:
        if row.get("op", "fwd") == "bwd":
            from ._backward import winners_config_of, winners_hash

            return stored == winners_hash(row["layout"], row["dtype"], row["dim"], row["precision"],
                                          winners_config_of(row["config"]))
        cfg = row["config"]
        cfg = KernelConfig.from_dict(cfg) if isinstance(cfg, dict) else cfg
        return stored == kernel_hash(row["layout"], row["dtype"], row["dim"], row["precision"], cfg,
                                     codes=row.get("codes", "none"))
    except (ConfigError, TypeError, KeyError):
        return False


def source_key(source: str) -> str:
    """Content hash of rendered source: the name of its cache file."""
    return hashlib.sha256(source.encode()).hexdigest()[:20]
