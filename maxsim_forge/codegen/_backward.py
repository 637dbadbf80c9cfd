"""The backward's kernels, rendered and built like the forward's.

The winners kernel (``templates/maxsim_bwd_winners.py.j2``) finds which doc token each
valid query token's max picked, per doc: the backward's O(Lq x Ld x dim) work per doc
(the scores again, tile by tile, never stored), with a config of its own, tuned per
bucket, and a heuristic for it. The gradient kernels (``templates/maxsim_bwd_grads.py.j2``)
then follow the winners for a query set against padded or packed docs: gathers of the winning doc
tokens for dq, each doc token's rows (the winners sorted) for dd, in a fixed order (the
same bits on every run); their tiles follow from the shapes (:func:`grads_meta`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ..templates import BWD_GRADS, BWD_WINNERS
from ._cache import load_source
from ._launcher import Launcher, cached_launcher
from ._config import ELEMENT_BYTES, MASK_KINDS, ConfigError, KernelSpec, next_pow2
from ._render import environment, interpreting, jit_kernels

# Feature tile of the winners kernel: the dim rounded up to a power of two, at most this
# (a longer dim loops over feature tiles).
MAX_BLOCK_K = 128


@dataclass(frozen=True)
class WinnersConfig:
    """Tiles and launch of the winners kernel: query rows and doc tokens per tile."""

    block_q: int = 32
    block_d: int = 64
    num_warps: int = 4
    num_stages: int = 2

    def key(self) -> str:
        return f"bq{self.block_q}-bdoc{self.block_d}-w{self.num_warps}-s{self.num_stages}"


def block_k(spec: KernelSpec) -> int:
    return min(max(16, next_pow2(spec.dim)), MAX_BLOCK_K)


def check_winners(spec: KernelSpec, cfg: WinnersConfig) -> None:
    """A spec and config the winners kernel takes, or a ConfigError naming what is wrong."""
    spec.validate()
    if spec.codes != "none":
        raise ConfigError(f"codes={spec.codes!r}: gradients are taken of float docs only")
    for name in ("block_q", "block_d"):
        value = getattr(cfg, name)
        if type(value) is not int or value < 16 or value > 128 or value & (value - 1):
            raise ConfigError(f"{name}={value!r} must be a power of two from 16 to 128")
    if cfg.num_warps not in (1, 2, 4, 8) or type(cfg.num_warps) is not int:
        raise ConfigError(f"num_warps={cfg.num_warps!r}; accepted: 1, 2, 4, 8")
    if type(cfg.num_stages) is not int or not 1 <= cfg.num_stages <= 4:
        raise ConfigError(f"num_stages={cfg.num_stages!r}; accepted: 1 to 4")


def winners_config(spec: KernelSpec, *, rows: int, ld: int) -> WinnersConfig:
    """A reasonable config for ``rows`` query rows a program may hold and docs of ``ld``
    tokens: tiles no larger than the work, fp32's doc tiles halved (twice the bytes)."""
    block_q = min(64, max(16, next_pow2(max(rows, 1))))
    block_d = min(32 if spec.dtype == "fp32" else 64, max(16, next_pow2(max(ld, 1))))
    return WinnersConfig(block_q=block_q, block_d=block_d, num_warps=4 if block_q * block_d >= 2048 else 2)


def winners_values(spec: KernelSpec, cfg: WinnersConfig, *, interpret: bool | None = None) -> dict:
    interpret = interpreting() if interpret is None else interpret
    return {
        "TEMPLATE": BWD_WINNERS,
        "VARIANT": f"{spec.key()}.winners-{cfg.key()}",
        "PAIRS": spec.layout == "pairs",
        "D_PACKED": spec.layout in ("packed", "pairs"),
        "Q_MASK": spec.q_mask,
        "D_MASK": spec.d_mask,
        "INPUT_PRECISION": spec.precision if spec.dtype == "fp32" else "",
        # Triton's interpreter multiplies bf16 tiles wrongly (triton 3.9): fp32 there, exact.
        "UPCAST_DOT": spec.dtype == "bf16" and interpret,
    }


def render_winners(spec: KernelSpec, cfg: WinnersConfig, *, interpret: bool | None = None) -> str:
    check_winners(spec, cfg)
    return environment().get_template(BWD_WINNERS).render(**winners_values(spec, cfg, interpret=interpret))


def winners_meta(spec: KernelSpec, cfg: WinnersConfig) -> dict:
    """The kernel's compile-time arguments and launch options."""
    bk = block_k(spec)
    return {"DIM": spec.dim, "BLOCK_Q": cfg.block_q, "BLOCK_D": cfg.block_d, "BLOCK_K": bk,
            "NUM_K": -(-spec.dim // bk), "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}


def winners_smem(spec: KernelSpec, cfg: WinnersConfig) -> int:
    """Shared memory estimate: doc tiles per stage and the query tile."""
    esize = ELEMENT_BYTES[spec.dtype]
    return (cfg.block_d * cfg.num_stages + cfg.block_q) * block_k(spec) * esize


def winners_hash(layout: str, dtype: str, dim: int, precision: str, cfg: WinnersConfig) -> str:
    """Hash of the winners kernels a tuned backward config runs (every mask kind its layout
    takes) and its launch: a stored backward row is current while this is unchanged."""
    meta = sorted(winners_meta(KernelSpec(layout, dtype, dim, precision), cfg).items())
    digest = hashlib.sha256(f"winners {layout} {dtype} {dim} {precision}; {meta}\f".encode())
    for q_mask in MASK_KINDS:
        for d_mask in MASK_KINDS:
            spec = KernelSpec(layout, dtype, dim, precision, q_mask, d_mask)
            try:
                source = render_winners(spec, cfg, interpret=False)
            except ConfigError:
                continue  # a mask kind this layout does not take
            for kernel in jit_kernels(source):
                digest.update(kernel.encode() + b"\n")
            digest.update(b"\f")
    return digest.hexdigest()[:16]


def winners_config_of(config: dict) -> WinnersConfig:
    """A stored backward config (a JSON object of its four knobs)."""
    try:
        return WinnersConfig(**{k: config[k] for k in ("block_q", "block_d", "num_warps", "num_stages")})
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"a backward config needs block_q, block_d, num_warps and num_stages; got {config!r}") \
            from exc


def load_winners(spec: KernelSpec, cfg: WinnersConfig):
    """The compiled-on-first-launch winners kernel of this spec and config."""
    return load_source(render_winners(spec, cfg))._maxsim_winners_kernel


_TL = {"fp16": "tl.float16", "bf16": "tl.bfloat16", "fp32": "tl.float32"}


def render_grads(spec: KernelSpec) -> str:
    """The gradient kernels' module of ``spec`` (a query set against padded or packed docs)."""
    spec.validate()
    if spec.codes != "none":
        raise ConfigError(f"codes={spec.codes!r}: gradients are taken of float docs only")
    if spec.layout == "pairs":
        raise ConfigError("layout='pairs': its gradients are gathers and a scatter in torch")
    return environment().get_template(BWD_GRADS).render(
        TEMPLATE=BWD_GRADS,
        VARIANT=f"{spec.layout}-{spec.dtype}-dim{spec.dim}.grads",
        D_PACKED=spec.layout == "packed",
        OUT_TYPE=_TL[spec.dtype],
    )


# Programs the dq kernel aims for (its docs split to reach them): a few per SM.
DQ_PROGRAMS = 512


def grads_meta(spec: KernelSpec, *, rows: int) -> tuple[dict, dict]:
    """Compile-time arguments and launch options of the dq and dd kernels for ``rows``
    query rows (the dq kernel's tiles are sized to spread them over the GPU)."""
    block_k = min(64, max(16, next_pow2(spec.dim)))
    dq = {"DIM": spec.dim, "BLOCK_R": 32 if rows >= 4096 else 16, "BLOCK_B": 4,
          "BLOCK_K": block_k, "num_warps": 4, "num_stages": 2}
    dd = {"DIM": spec.dim, "BLOCK_J": 32, "BLOCK_K": min(128, max(16, next_pow2(spec.dim))), "num_warps": 4,
          "num_stages": 2}
    return dq, dd


def load_grads(spec: KernelSpec):
    """The compiled-on-first-launch gradient kernels' module (``_maxsim_dq_kernel``,
    ``_maxsim_dd_kernel``) of this spec."""
    return load_source(render_grads(spec))


def winners_launcher(spec: KernelSpec, cfg: WinnersConfig) -> Launcher:
    """The winners kernel of this spec and config, ready to launch: rendered and built on
    first use only, then launched without Triton's per-call dispatch."""
    return cached_launcher(("winners", spec, cfg, interpreting()), lambda: load_winners(spec, cfg),
                           winners_meta(spec, cfg))


def grads_launcher(spec: KernelSpec, which: str, meta: dict) -> Launcher:
    """The ``"dq"`` or ``"dd"`` gradient kernel of this spec with these meta-parameters
    (:func:`grads_meta`), ready to launch, built on first use only."""
    return cached_launcher((which, spec, tuple(meta.items()), interpreting()),
                           lambda: getattr(load_grads(spec), f"_maxsim_{which}_kernel"), meta)


__all__ = ["DQ_PROGRAMS", "WinnersConfig", "check_winners", "grads_launcher", "grads_meta", "load_grads",
           "load_winners", "render_grads", "render_winners", "winners_config", "winners_config_of", "winners_hash",
           "winners_launcher", "winners_meta", "winners_smem", "winners_values"]
