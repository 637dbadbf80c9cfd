"""The heuristic default config: the last lookup source, good enough to never be slow.

A short table of regimes (first match wins) sets the tiling a call starts from;
named steps then cap the doc tile, pick the feature tiles and the masked loop,
fit the device and split the docs of a batch too small to fill the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from ..codegen import (
    MIN_CODE_K, ConfigError, KernelConfig, KernelSpec, exact_k_fits, k_chunks, next_pow2, partial_doc_tiles,
    query_programs, validate,
)

# Programs per SM a batch should reach before its docs are split.
_WAVES = 2
# The most queries over packed docs whose 65 to 128 folded rows stay in one tile.
_PACKED_ONE_TILE_QUERIES = 8


def _pow2_at_least(x: int, lo: int, hi: int) -> int:
    """The smallest power of two >= x, kept within [lo, hi] (both powers of two)."""
    return min(max(next_pow2(x), lo), hi)


@dataclass(frozen=True)
class Call:
    """What the heuristic knows of a call: its spec, sizes and device limits."""

    spec: KernelSpec
    nq: int
    lq: int
    nb: int
    ld: int
    sm_count: int = 132
    smem_limit: int | None = None

    @property
    def block_k(self) -> int:
        """Feature tile: the whole dim up to 256, else 128 features (64 in fp32); at least
        32 where the query is quantized (the int8 and fp8 dots' depth)."""
        if self.spec.dim <= 256:
            return _pow2_at_least(self.spec.dim, MIN_CODE_K if self.spec.query_codes else 16, 256)
        return 64 if self.spec.dtype == "fp32" else 128

    @property
    def folded(self) -> bool:
        """Several queries shared by every doc, folded into one row set."""
        return self.spec.layout in ("allpairs", "packed") and self.nq > 1

    @property
    def rows(self) -> int:
        """Query rows one doc meets: the folded set's, else one query's."""
        return self.nq * self.lq if self.folded else self.lq

    @property
    def tall(self) -> bool:
        """Whether 256-row tiles on eight warps fit: half precision, feature tile <= 128."""
        return self.spec.dtype != "fp32" and self.block_k <= 128


# A knob's value: fixed, or computed from the call.
Knob = int | str | Callable[[Call], int]


@dataclass(frozen=True)
class Regime:
    """One row of the table: where it applies, the knobs it sets, and why."""

    name: str
    applies: Callable[[Call], bool]
    knobs: tuple[tuple[str, Knob], ...]
    reason: str

    def config(self, call: Call) -> KernelConfig:
        """The starting config: this regime's knobs and the call's feature tile."""
        values = {name: value(call) if callable(value) else value for name, value in self.knobs}
        return KernelConfig(block_k=call.block_k, **values)


def _knobs(q_mode: str, block_q: Knob, block_d: Knob, num_warps: Knob, num_stages: int) -> tuple:
    return (("q_mode", q_mode), ("block_q", block_q), ("block_d", block_d), ("num_warps", num_warps),
            ("num_stages", num_stages))


def _short_query_tile(call: Call) -> int:
    return _pow2_at_least(call.lq, 16, 64)


def _short_query_warps(call: Call) -> int:
    return 2 if _short_query_tile(call) <= 32 else 4


def _doc_tile_by_load(call: Call) -> int:
    """Short doc tiles where each SM has few programs, long ones where it has many."""
    per_sm = call.nq * call.nb / max(call.sm_count, 1)
    if 1 <= per_sm <= 8:
        return 16
    if per_sm >= 16:
        return 64
    return 32


REGIMES: tuple[Regime, ...] = (
    Regime("query-set-over-padded-docs",
           lambda c: c.folded and c.spec.layout == "allpairs" and c.rows >= 256 and c.tall,
           _knobs("persist", 256, 64, 8, 3),
           "a persistent grid keeps each folded query tile across the padded docs"),
    Regime("large-query-set",
           lambda c: c.folded and c.rows >= 512 and c.tall,
           _knobs("fold", 256, 64, 8, 3),
           "packed docs have no persistent grid: 256-row fold tiles on eight warps halve the doc reads per row"),
    Regime("query-set-in-one-tile",
           lambda c: c.folded and 64 < c.rows <= 128
           and (c.spec.layout == "allpairs" or c.nq <= _PACKED_ONE_TILE_QUERIES),
           _knobs("fold", 128, 64, 4, 3),
           "one 128-row tile stores each query's sum, with no zeroed output and no atomics"),
    Regime("medium-query-set",
           lambda c: c.folded and c.rows >= 256,
           _knobs("fold", 128, 64, 4, 1),
           "a folded set of 256 rows or more that the 256-row tiles do not take: 128-row fold tiles"),
    Regime("small-query-set",
           lambda c: c.folded and c.rows >= 64,
           _knobs("fold", 64, 64, 4, 1),
           "a folded set of 64 to 255 rows that one 128-row tile does not take: 64-row fold tiles"),
    # A folded set under 64 rows (queries under 32 tokens) is tiled as one query below.
    Regime("one-tall-query-tile",
           lambda c: c.lq == 256 and c.tall,
           _knobs("tile", 256, 64, 8, 3),
           "a query of one 256-row tile walks the doc once in straight-line code"),
    Regime("long-query",
           lambda c: c.lq > 256 and c.tall,
           _knobs("grid", 256, 64, 8, 3),
           "256-row query tiles on eight warps halve the doc reads per row"),
    Regime("long-wide-query",
           lambda c: c.lq >= 256,
           _knobs("grid", 128, 64, 4, 3),
           "a long query in fp32 or with wide feature tiles takes 128-row tiles"),
    Regime("medium-query",
           lambda c: c.lq > 64,
           _knobs("grid", 64, 64, 4, 3),
           "a query over one 64-row tile spreads its tiles over programs"),
    Regime("short-query",
           lambda c: True,
           _knobs("tile", _short_query_tile, _doc_tile_by_load, _short_query_warps, 3),
           "a query of one tile walks the doc once in straight-line code, doc tiles sized by load"),
)


def regime_for(call: Call) -> Regime:
    """The first regime of :data:`REGIMES` that applies to ``call``."""
    for regime in REGIMES:
        if regime.applies(call):
            return regime
    raise ConfigError(f"no heuristic regime applies to {call!r}; the last one must take every call")


# Steps after the regime, in order; each takes the call and the config so far.


def _short_doc_tiles_for_wide_rows(call: Call, cfg: KernelConfig) -> KernelConfig:
    """fp32 or feature tiles over 128: doc tiles of at most 32 tokens."""
    if call.spec.dtype == "fp32" or cfg.block_k > 128:
        return replace(cfg, block_d=min(cfg.block_d, 32))
    return cfg


def _no_doc_tile_past_the_docs(call: Call, cfg: KernelConfig) -> KernelConfig:
    """No doc tile longer than the docs (where their length is known)."""
    if call.ld > 0:
        return replace(cfg, block_d=min(cfg.block_d, _pow2_at_least(call.ld, 16, 256)))
    return cfg


def _exact_feature_tiles(call: Call, cfg: KernelConfig) -> KernelConfig:
    """A dim that is no power of two takes exact feature tiles (96 = 64 + 32), where each
    is deep enough for a quantized query's dot."""
    exact = exact_k_fits(call.spec.dim) and (not call.spec.query_codes or
                                            min(w for _, w in k_chunks(call.spec, cfg)) >= MIN_CODE_K)
    return replace(cfg, exact_k=exact)


def _masked_loop(call: Call, cfg: KernelConfig) -> KernelConfig:
    """A straight-line tile whose docs can end mid-tile walks them in one masked loop."""
    return replace(cfg, masked_loop=cfg.q_mode == "tile" and partial_doc_tiles(call.spec, call.ld, cfg.block_d))


def _fit_device(call: Call, cfg: KernelConfig) -> KernelConfig:
    return _fit(call.spec, cfg, call.smem_limit)


def _split_docs(call: Call, cfg: KernelConfig) -> KernelConfig:
    """Split the doc tokens while the grid is under two waves (never on the persistent grid)."""
    programs = max(1, query_programs(call.spec.layout, cfg, call.nq, call.lq) * call.nb)
    longest = max(call.ld, 1)
    split_d = 1
    while (cfg.q_mode != "persist" and programs * split_d < _WAVES * call.sm_count and split_d < 16
           and longest // (split_d * 2) >= cfg.block_d):
        split_d *= 2
    return replace(cfg, split_d=split_d)


STEPS: tuple[Callable[[Call, KernelConfig], KernelConfig], ...] = (
    _short_doc_tiles_for_wide_rows, _no_doc_tile_past_the_docs, _exact_feature_tiles, _masked_loop,
    _fit_device, _split_docs,
)


def default_config(
    spec: KernelSpec, *, nq: int, lq: int, nb: int, ld: int, sm_count: int = 132,
    smem_limit: int | None = None,
) -> KernelConfig:
    """A config that is valid for ``spec`` and reasonable for these sizes: the first
    regime of :data:`REGIMES` that applies, then each of :data:`STEPS`. The tile shrinks
    until it fits ``smem_limit`` (default: Hopper's) and the register estimate."""
    call = Call(spec, nq=nq, lq=lq, nb=nb, ld=ld, sm_count=sm_count, smem_limit=smem_limit)
    cfg = regime_for(call).config(call)
    for step in STEPS:
        cfg = step(call, cfg)
    return cfg


def heuristic_regime(
    spec: KernelSpec, *, nq: int, lq: int, nb: int, ld: int, sm_count: int = 132,
    smem_limit: int | None = None,
) -> str:
    """The name of the regime :func:`default_config` starts from, for the same arguments:
    the row of :data:`REGIMES` that says why the default config was chosen."""
    return regime_for(Call(spec, nq=nq, lq=lq, nb=nb, ld=ld, sm_count=sm_count, smem_limit=smem_limit)).name


def _fit(spec: KernelSpec, cfg: KernelConfig, smem_limit: int | None) -> KernelConfig:
    """``cfg`` made smaller until it passes the device checks: fewer pipeline stages, then
    shorter query tiles (with fewer warps), then shorter doc tiles."""
    while True:
        try:
            validate(spec, cfg, smem_limit=smem_limit)
            return cfg
        except ConfigError:
            pass
        if cfg.num_stages > 2:
            cfg = replace(cfg, num_stages=cfg.num_stages - 1)
        elif cfg.block_q > 64:
            cfg = replace(cfg, block_q=cfg.block_q // 2, num_warps=max(4, cfg.num_warps // 2))
        elif cfg.block_d > 16:
            cfg = replace(cfg, block_d=cfg.block_d // 2)
        elif cfg.num_stages > 1:
            cfg = replace(cfg, num_stages=1)
        elif cfg.block_q > 16:
            cfg = replace(cfg, block_q=cfg.block_q // 2)
        else:
            return cfg  # the smallest tile: the launch reports what does not fit
