"""The heuristic default config: the last lookup source, good enough to never be slow.

It follows what the tuner finds on Hopper for each regime: a query that fits one
tile walks the doc once in straight-line code (``tile``); long queries spread their
tiles over programs (``grid``); several shared queries fold into one row set
(``fold``), which a persistent grid keeps across padded docs (``persist``); and
batches too small to fill the GPU split the doc tokens (``split_d``).
"""

from __future__ import annotations

from dataclasses import replace

from ..codegen import (
    ConfigError, KernelConfig, KernelSpec, exact_k_fits, next_pow2, partial_doc_tiles, query_programs, validate,
)

# Programs per SM we aim for before splitting docs.
_WAVES = 2
# Folded rows that fit one tile store each query's sum (32 queries per step), with no
# zeroed output and no atomics. Over 4000 docs on an H100, fp16, against tiles half as
# tall that add with atomics (benchmarks/results/fold-store-h100-2026-11-27-onehot.json;
# BENCHMARKS.md):
# - 64 rows in one 64-row tile: faster at every count from 2 to 64 queries, packed and
#   padded docs (64 one-token queries: 0.0488 against 0.0762 ms packed, 0.1197 against
#   0.1403 ms padded).
# - 65 to 128 rows in one 128-row tile: faster over padded docs at every count from 4 to
#   128 queries (0.1372 against 0.1784 ms at 4, 0.1579 against 0.1614 at 128); over
#   packed docs up to 8 queries (0.0789 against 0.0866 ms at 4, level at 8), while from
#   16 queries two 64-row tiles were 4% to 21% faster (0.0763 against 0.0793 ms at 16,
#   0.0772 against 0.0980 at 128).
_PACKED_ONE_TILE_QUERIES = 8


def _pow2_at_least(x: int, lo: int, hi: int) -> int:
    """The smallest power of two >= x, kept within [lo, hi] (both powers of two)."""
    return min(max(next_pow2(x), lo), hi)


def default_config(
    spec: KernelSpec, *, nq: int, lq: int, nb: int, ld: int, sm_count: int = 132,
    smem_limit: int | None = None,
) -> KernelConfig:
    """A config that is valid for ``spec`` and reasonable for these sizes.

    The regimes follow the exhaustive sweeps on an H100 (benchmarks/bench_tuner.py):
    the whole dim in one tile; short queries walk the doc with small doc tiles on two
    warps; folded query sets of 256 rows or more over padded docs take the persistent
    grid; folded packed-doc sets of 512 rows or more and queries of 256 tokens or more use
    256-row tiles on eight warps, smaller folded sets 128-row tiles, against 64-token
    doc tiles; a folded set that fits one tile stays in it and stores each query's sum
    (over packed docs, 65 to 128 rows only up to 8 queries). The tile shrinks
    until it fits ``smem_limit`` (default: Hopper's) and the register estimate.
    """
    if spec.dim <= 256:
        block_k = _pow2_at_least(spec.dim, 16, 256)
    else:
        block_k = 64 if spec.dtype == "fp32" else 128
    folded = spec.layout in ("allpairs", "packed") and nq > 1
    rows = nq * lq if folded else lq
    # 256-row tiles on eight warps: half-precision inputs with the whole dim in one tile.
    tall = spec.dtype != "fp32" and block_k <= 128
    if folded and spec.layout == "allpairs" and rows >= 256 and tall:
        # Shared queries over padded docs: the persistent grid, whose programs keep their
        # query tile across docs. The tuner's pick for 8, 16 and 32 queries of 32 tokens,
        # fp16 and bf16, on an H100 and an H200 (16 fp16 queries on the H100: 0.1111 ms
        # against 0.1210 ms for the best fold config in the same study; BENCHMARKS.md).
        q_mode, block_q, block_d, num_warps, num_stages = "persist", 256, 64, 8, 3
    elif folded and rows >= 512 and tall:
        # 16 and 32 packed-doc queries: the 256-row fold tiles that won over padded docs
        # before the persistent grid (which needs a longest doc length) joined the space.
        q_mode, block_q, block_d, num_warps, num_stages = "fold", 256, 64, 8, 3
    elif folded and 64 < rows <= 128 and (spec.layout == "allpairs" or nq <= _PACKED_ONE_TILE_QUERIES):
        # Folded rows that fit one 128-row tile store each query's sum (no zeroed output,
        # no atomics; measurements above). 4 queries of 32 tokens on an H200, with the
        # earlier per-query store: this config took 0.0462 ms against 0.0574 ms for two
        # 64-row tiles (fp16, same study; BENCHMARKS.md).
        q_mode, block_q, block_d, num_warps, num_stages = "fold", 128, 64, 4, 3
    elif folded and rows >= 64:
        q_mode, block_q, block_d, num_warps, num_stages = "fold", 128 if rows >= 256 else 64, 64, 4, 1
    elif lq >= 256 and tall:
        # Long queries: 256-row tiles on eight warps halve the doc reads per row. Image as
        # query (Lq 1024 x Ld 1024, B 1k) on an H200: 0.4615 ms against 0.5080 ms for the
        # best 128-row tile without defer_max, 0.4851 ms with it
        # (benchmarks/results/bigtile-h200-2026-11-27.json).
        # A query of one such tile runs it in straight-line code (the tuner's pick for
        # Lq 256 in bf16 on the H200).
        q_mode = "tile" if lq <= 256 else "grid"
        block_q, block_d, num_warps, num_stages = 256, 64, 8, 3
    elif lq > 64:
        q_mode, block_q, block_d, num_warps, num_stages = "grid", 128 if lq >= 256 else 64, 64, 4, 3
    else:
        # One query tile per program, in straight-line code (no loop around the doc
        # loop). ColBERT B 10k on an H200: a single static tile instead of the loop was
        # 4% to 28% faster with doc tiles of 32 to 128 tokens, level at 16; on an H100
        # the tuner's best tile config beat its best loop config in 6 of 9 buckets
        # (0.4% to 5.6%), level in 2 (BENCHMARKS.md).
        block_q = _pow2_at_least(lq, 16, 64)
        q_mode, block_d, num_warps, num_stages = "tile", 32, 2 if block_q <= 32 else 4, 3
        # Doc tiles by programs per SM. With two warps, three stages and the masked loop,
        # on an H100 (benchmarks/results/masked-loop-h100-2026-11-27.json): 16 tokens won
        # at B 1k (ColBERT, ColPali; about 8 programs per SM), 64 at B 4k to 50k (ColBERT
        # full, ragged and dim 96, packed), by 1% to 2% over 32.
        per_sm = nq * nb / max(sm_count, 1)
        if 1 <= per_sm <= 8:
            block_d = 16
        elif per_sm >= 16:
            block_d = 64
    if spec.dtype == "fp32" or block_k > 128:
        block_d = min(block_d, 32)
    if ld > 0:  # no tile longer than the docs
        block_d = min(block_d, _pow2_at_least(ld, 16, 256))
    # A dim that is no power of two takes exact feature tiles (96 = 64 + 32): on an H100
    # they were 0.8 to 4.9% faster at dim 96 and 16k docs, and level at 1k.
    # Where docs end mid-tile, a straight-line tile takes its doc in one masked loop: on
    # an H100 that twin was faster at the median of 12 or 13 tile configs in 6 of 7
    # bench cases (by 0.3% to 3.8%), level in the seventh (BENCHMARKS.md).
    masked_loop = q_mode == "tile" and partial_doc_tiles(spec, ld, block_d)
    cfg = KernelConfig(block_q=block_q, block_d=block_d, block_k=block_k, num_warps=num_warps,
                       num_stages=num_stages, q_mode=q_mode, exact_k=exact_k_fits(spec.dim),
                       masked_loop=masked_loop)
    cfg = _fit(spec, cfg, smem_limit)
    programs = max(1, query_programs(spec.layout, cfg, nq, lq) * nb)
    split_d = 1
    longest = max(ld, 1)
    splits = cfg.q_mode != "persist"  # the persistent grid takes no doc split
    while (splits and programs * split_d < _WAVES * sm_count and split_d < 16
           and longest // (split_d * 2) >= cfg.block_d):
        split_d *= 2
    return replace(cfg, split_d=split_d)


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
