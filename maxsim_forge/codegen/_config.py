"""What a generated kernel is specialised on, and the checks that run before rendering.

A *variant* is a :class:`KernelSpec` (what the call looks like: layout, dtype, dim,
precision, which masks exist) plus a :class:`KernelConfig` (how the kernel is tiled
and launched). The spec comes from the call; the config comes from the tuned
database or the heuristic default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

LAYOUTS = ("padded", "allpairs", "packed", "pairs")
DTYPES = ("fp16", "bf16", "fp32")
PRECISIONS = ("tf32", "ieee")
MASK_KINDS = ("none", "lengths", "mask")
Q_MODES = ("loop", "grid", "fold", "tile", "persist")
# Quantized documents: "none" (docs in the query's dtype), "int8" / "fp8" (doc codes
# dequantized in registers, the query in its own dtype), "int8xint8" / "fp8xfp8" (the
# query quantized per token too, the dot on int8 or fp8 tensor cores). fp8 is e4m3.
CODES = ("none", "int8", "fp8", "int8xint8", "fp8xfp8")
CODE_DTYPES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}
# A quantized query's dot takes feature tiles of at least 32 (the int8 and fp8 MMA's k).
MIN_CODE_K = 32

# Hopper's per-block shared-memory opt-in limit: assumed where the caller or the device
# gives none, and the interpreter's stand-in.
DEFAULT_SMEM_LIMIT = 232_448
# A register budget per thread above which Triton spills heavily.
MAX_REGS_PER_THREAD = 255
TORCH_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
ELEMENT_BYTES = {name: dtype.itemsize for name, dtype in TORCH_DTYPES.items()}


class ConfigError(ValueError):
    """A spec or config that cannot be generated; the message names the knob."""


def _is_pow2(x: int) -> bool:
    return x > 0 and (x & (x - 1)) == 0


@dataclass(frozen=True)
class KernelSpec:
    """The shape of a call that a generated kernel is specialised on.

    ``q_mask`` / ``d_mask`` say how invalid tokens are given: ``none``, per-row
    ``lengths`` or a boolean ``mask``. Packed and pairs layouts take the doc (and,
    for pairs, the query) extents from ``cu_seqlens`` and so have ``d_mask="none"``.
    ``precision`` only matters for fp32 inputs; half types store ``"native"``.
    ``codes`` says how the docs are stored (:data:`CODES`); where the query is quantized
    too (``int8xint8``, ``fp8xfp8``) there is no float dot and ``precision`` is ``"native"``.
    """

    layout: str
    dtype: str
    dim: int
    precision: str = "tf32"
    q_mask: str = "none"
    d_mask: str = "none"
    codes: str = "none"

    def __post_init__(self) -> None:
        if (self.dtype in ("fp16", "bf16") or self.query_codes) and self.precision != "native":
            object.__setattr__(self, "precision", "native")

    @property
    def doc_codes(self) -> str | None:
        """The docs' code format ("int8" or "fp8"), None for float docs."""
        return None if self.codes == "none" else self.codes.split("x")[0]

    @property
    def query_codes(self) -> str | None:
        """The query's code format where the query is quantized too, else None."""
        return self.codes.split("x")[1] if "x" in self.codes else None

    def validate(self) -> None:
        _choice("layout", self.layout, LAYOUTS)
        _choice("dtype", self.dtype, DTYPES)
        if not isinstance(self.dim, int) or self.dim < 1:
            raise ConfigError(f"dim must be a positive integer, got {self.dim!r}")
        if self.dtype == "fp32" and not self.query_codes:
            _choice("precision", self.precision, PRECISIONS)
        _choice("q_mask", self.q_mask, MASK_KINDS)
        _choice("d_mask", self.d_mask, MASK_KINDS)
        _choice("codes", self.codes, CODES)
        if self.query_codes and self.dim < MIN_CODE_K:
            raise ConfigError(
                f"codes={self.codes!r} takes a dim of at least {MIN_CODE_K} (the {self.query_codes} "
                f"tensor-core dot's feature depth); got dim {self.dim}"
            )
        if self.layout in ("packed", "pairs") and self.d_mask != "none":
            raise ConfigError(
                f"d_mask={self.d_mask!r} contradicts layout {self.layout!r}: packed docs "
                "take their extents from cu_seqlens, so d_mask must be 'none'"
            )
        if self.layout == "pairs" and self.q_mask != "none":
            raise ConfigError(
                f"q_mask={self.q_mask!r} contradicts layout 'pairs': pair queries take "
                "their extents from cu_seqlens, so q_mask must be 'none'"
            )

    def key(self) -> str:
        """The spec in a variant's name: ``padded-fp16-dim128-native-qmask_none-docmask_lengths``."""
        return (
            f"{self.layout}-{self.dtype}-dim{self.dim}-{self.precision}"
            f"-qmask_{self.q_mask}-docmask_{self.d_mask}"
            + ("" if self.codes == "none" else f"-codes_{self.codes}")
        )


@dataclass(frozen=True)
class KernelConfig:
    """How a variant is tiled and launched.

    - ``block_q``: query tokens per tile; ``block_d``: doc tokens per tile;
      ``block_k``: embedding features per dot (below the dim, the dim is split).
    - ``q_mode``: ``loop`` (one program walks all tiles of a query; plain store),
      ``grid`` (query tiles over programs; atomic sum), ``fold`` (all queries folded
      into one long row set, tiles over programs, per-query segmented atomic sum),
      ``tile`` (query tiles over programs like ``grid``, each in straight-line code with
      no loop around the doc loop; a plain store where a query is one tile, else an
      atomic sum); ``persist`` (padded docs and several queries, folded like ``fold``, on
      a persistent grid of about two programs per SM: each keeps its query tile and walks
      its share of the docs in one flattened loop over (doc, doc tile), every tile masked).
    - ``split_d``: doc tokens split over this many programs; a second kernel takes
      the max over the splits and the sum (for batches too small to fill the GPU).
    - ``exact_k``: a dim that is no power of two is covered by power-of-two feature
      tiles that sum to it (96 = 64 + 32) instead of one ``block_k`` tile padded with
      zeros; ``block_k`` is then the dim rounded up to a power of two.
    - ``overlap_max``: each doc tile's dot is issued before the previous tile's row max
      is taken (two score tiles live at once), so the tensor cores need not wait for
      the max: for long docs, where the kernel is bound by the dots.
    - ``masked_loop``: every doc tile, the partial last one included, goes through one
      masked loop, so the software pipeline prefetches the last tile with the others;
      by default full tiles run unmasked and the partial tile follows the loop.
    - ``defer_max``: the doc loop keeps a running element-wise max of the score tiles and
      takes the row max once, after the loop, instead of a row max (a reduction across
      threads) per doc tile: for long docs and tall query tiles, where the dots dominate.
    """

    block_q: int = 32
    block_d: int = 64
    block_k: int = 128
    num_warps: int = 4
    num_stages: int = 3
    q_mode: str = "loop"
    split_d: int = 1
    exact_k: bool = False
    overlap_max: bool = False
    masked_loop: bool = False
    defer_max: bool = False

    @classmethod
    def from_dict(cls, data: dict) -> KernelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown config knob(s) {unknown}; accepted: {sorted(names)}")
        return cls(**data)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def key(self) -> str:
        """The config in a variant's name: tiles (``bq``, ``bdoc``, ``bk``), warps, stages,
        q_mode, the doc split, then each boolean knob that is on, by its name."""
        flags = "".join(f"-{name}" for name in _FLAGS if getattr(self, name))
        return (
            f"bq{self.block_q}-bdoc{self.block_d}-bk{self.block_k}-w{self.num_warps}"
            f"-s{self.num_stages}-{self.q_mode}-split{self.split_d}{flags}"
        )


_FLAGS = ("exact_k", "overlap_max", "masked_loop", "defer_max")


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a dtype name (``fp16``, ``bf16``, ``fp32``)."""
    return TORCH_DTYPES[name]


def _choice(name: str, value: object, accepted: tuple[str, ...]) -> None:
    if value not in accepted:
        raise ConfigError(f"{name}={value!r} is not supported; accepted: {', '.join(accepted)}")


def doc_bytes(spec: KernelSpec) -> int:
    """Bytes of one doc feature as the kernel reads it: a code, or the query's dtype."""
    return 1 if spec.doc_codes else ELEMENT_BYTES[spec.dtype]


def query_bytes(spec: KernelSpec) -> int:
    """Bytes of one query feature as the kernel reads it."""
    return 1 if spec.query_codes else ELEMENT_BYTES[spec.dtype]


def k_width(spec: KernelSpec, cfg: KernelConfig) -> int:
    """Features a doc or query tile holds: the dim with ``exact_k``, else ``block_k``."""
    return spec.dim if cfg.exact_k else cfg.block_k


def exact_k_fits(dim: int) -> bool:
    """Whether exact feature tiles (``exact_k``) differ from one padded tile for ``dim``:
    a multiple of 16 that is no power of two, up to 256."""
    return dim <= 256 and dim % 16 == 0 and dim != next_pow2(dim)


def partial_doc_tiles(spec: KernelSpec, ld: int, block_d: int) -> bool:
    """Whether docs of ``spec`` with padded (or longest) length ``ld`` can end mid-tile,
    which is where one masked loop (``masked_loop``) differs from full tiles and a tail:
    docs given by lengths, masks or offsets, or a length that is no multiple of ``block_d``."""
    return spec.d_mask != "none" or spec.layout in ("packed", "pairs") or ld % block_d != 0


def k_chunks(spec: KernelSpec, cfg: KernelConfig) -> list[tuple[int, int]]:
    """(first feature, width) of each feature tile of ``exact_k``: the dim's binary
    digits from the largest, e.g. 96 -> [(0, 64), (64, 32)]."""
    out, off = [], 0
    for bit in reversed(range(spec.dim.bit_length())):
        if spec.dim >> bit & 1:
            out.append((off, 1 << bit))
            off += 1 << bit
    return out


def smem_bytes(spec: KernelSpec, cfg: KernelConfig) -> int:
    """Shared memory a variant needs: doc tiles per pipeline stage plus the query tile.

    A split dim (several feature chunks) needs them per chunk: Triton 3.6 gave each chunk
    buffers of its own (dim 320 at 3 stages, on sm_90: ``bq128-bdoc64-bk128`` fp16 took
    245760 bytes, ``bq128-bdoc32-bk64`` fp32 286720, chunks x (stages x doc tile + query
    tile) each). The larger of that and the query tile pipelined with the doc tiles (as
    another Triton may lay it out) is the estimate."""
    stages = max(cfg.num_stages, 1)
    doc = cfg.block_d * k_width(spec, cfg) * doc_bytes(spec)
    query = cfg.block_q * k_width(spec, cfg) * query_bytes(spec)
    chunks = num_k_chunks(spec, cfg)
    if chunks == 1:
        return doc * stages + query
    return max(chunks * (doc * stages + query), (doc + query) * stages)


def registers_per_thread(spec: KernelSpec, cfg: KernelConfig) -> int:
    """A rough per-thread register estimate: score tile, query tile, row state, overhead."""
    threads = 32 * cfg.num_warps
    # fp32 score tiles: the dot's, the previous one (overlap_max), the running max (defer_max)
    score = cfg.block_q * cfg.block_d * (1 + cfg.overlap_max + cfg.defer_max)
    query = cfg.block_q * k_width(spec, cfg) * query_bytes(spec) // 4
    doc = cfg.block_d * k_width(spec, cfg) * doc_bytes(spec) // 4
    return (score + query + doc) // threads + cfg.block_q // 8 + 40


def num_k_chunks(spec: KernelSpec, cfg: KernelConfig) -> int:
    return -(-spec.dim // cfg.block_k)


def validate(spec: KernelSpec, cfg: KernelConfig, *, smem_limit: int | None = None) -> None:
    """Reject a variant before rendering, naming the knob that is wrong."""
    spec.validate()
    _check_tiles(spec, cfg)
    _check_knobs(spec, cfg)
    _check_mode(spec, cfg)
    _check_device(spec, cfg, DEFAULT_SMEM_LIMIT if smem_limit is None else smem_limit)


def _check_tiles(spec: KernelSpec, cfg: KernelConfig) -> None:
    for name in ("block_q", "block_d", "block_k"):
        value = getattr(cfg, name)
        if type(value) is not int or not _is_pow2(value) or value < 16:
            raise ConfigError(
                f"{name}={value!r} must be a power of two >= 16 (tl.dot's smallest tile)"
            )
    if cfg.block_q > 256 or cfg.block_d > 256 or cfg.block_k > 256:
        raise ConfigError(
            f"tiles above 256 are not generated (block_q={cfg.block_q}, "
            f"block_d={cfg.block_d}, block_k={cfg.block_k})"
        )
    if spec.query_codes and (cfg.block_k < MIN_CODE_K or
                             (cfg.exact_k and min(w for _, w in k_chunks(spec, cfg)) < MIN_CODE_K)):
        raise ConfigError(
            f"codes={spec.codes!r} dots {spec.query_codes} tiles of at least {MIN_CODE_K} features; "
            f"got block_k={cfg.block_k}" + (f" with exact_k feature tiles {[w for _, w in k_chunks(spec, cfg)]}"
                                            if cfg.exact_k else "")
        )
    if cfg.block_k > max(16, next_pow2(spec.dim)):
        raise ConfigError(
            f"block_k={cfg.block_k} exceeds dim {spec.dim} rounded up to a power of two "
            f"({max(16, next_pow2(spec.dim))}); it would only load padding"
        )


def _check_knobs(spec: KernelSpec, cfg: KernelConfig) -> None:
    for name in _FLAGS:
        if not isinstance(getattr(cfg, name), bool):
            raise ConfigError(f"{name}={getattr(cfg, name)!r}; accepted: True, False")
    if cfg.overlap_max and cfg.defer_max:
        raise ConfigError(
            "overlap_max=True and defer_max=True are two ways to take the row max off the dots' "
            "path; the template takes one: set at most one of them"
        )
    if cfg.exact_k:
        whole = max(16, next_pow2(spec.dim))
        if not exact_k_fits(spec.dim) or cfg.block_k != whole:
            raise ConfigError(
                f"exact_k=True takes a dim that is a multiple of 16 but no power of two, up to 256, "
                f"with block_k the dim rounded up ({whole}); got dim {spec.dim}, block_k={cfg.block_k}"
            )
    # Exact types: a bool is no warp count, nor is 2.0.
    if type(cfg.num_warps) is not int or cfg.num_warps not in (1, 2, 4, 8, 16):
        raise ConfigError(f"num_warps={cfg.num_warps!r}; accepted: 1, 2, 4, 8, 16")
    if type(cfg.num_stages) is not int or not 1 <= cfg.num_stages <= 6:
        raise ConfigError(f"num_stages={cfg.num_stages!r}; accepted: 1 to 6")
    if type(cfg.split_d) is not int or not _is_pow2(cfg.split_d) or cfg.split_d > 64:
        raise ConfigError(f"split_d={cfg.split_d!r} must be a power of two from 1 to 64")


def _check_mode(spec: KernelSpec, cfg: KernelConfig) -> None:
    _choice("q_mode", cfg.q_mode, Q_MODES)
    if cfg.q_mode in ("fold", "persist") and spec.layout in ("padded", "pairs"):
        raise ConfigError(
            f"q_mode={cfg.q_mode!r} contradicts layout {spec.layout!r}: folding needs several "
            "shared queries (layouts allpairs, packed)"
        )
    if cfg.q_mode == "persist" and spec.layout != "allpairs":
        raise ConfigError(
            f"q_mode='persist' contradicts layout {spec.layout!r}: its loop counts doc tiles from "
            "the padded doc length, which only layout allpairs has (packed docs may pass none)"
        )
    if cfg.q_mode == "persist" and cfg.split_d != 1:
        raise ConfigError(
            f"q_mode='persist' walks whole docs, so split_d must be 1; got split_d={cfg.split_d!r}"
        )


def _check_device(spec: KernelSpec, cfg: KernelConfig, limit: int) -> None:
    need = smem_bytes(spec, cfg)
    if need > limit:
        raise ConfigError(
            f"block_d={cfg.block_d}, block_q={cfg.block_q}, block_k={cfg.block_k} with "
            f"num_stages={cfg.num_stages} need about {need} bytes of shared memory; the "
            f"device allows {limit}"
        )
    regs = registers_per_thread(spec, cfg)
    if regs > MAX_REGS_PER_THREAD:
        raise ConfigError(
            f"block_q={cfg.block_q} x block_d={cfg.block_d} with num_warps={cfg.num_warps} "
            f"needs about {regs} registers per thread; at most {MAX_REGS_PER_THREAD} fit"
        )


def query_programs(layout: str, cfg: KernelConfig, nq: int, lq: int) -> int:
    """Programs per doc of the main kernel before any doc split, as its launcher counts
    them: query tiles over programs (``grid``, ``fold``), or one per query (``loop``).
    ``persist`` counts its query tiles; its grid is about two programs per SM in all."""
    if cfg.q_mode in ("fold", "persist"):
        return -(-(nq * lq) // cfg.block_q)
    if cfg.q_mode in ("grid", "tile"):
        return -(-lq // cfg.block_q) * (1 if layout == "pairs" else nq)
    return 1 if layout == "pairs" else nq


def next_pow2(x: int) -> int:
    """The smallest power of two >= x (1 for x <= 1)."""
    return 1 << (x - 1).bit_length() if x > 1 else 1
