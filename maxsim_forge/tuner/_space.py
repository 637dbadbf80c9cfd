"""The search space, as data: value lists and named restrictions, each with its reason.

A restriction sees the spec, the config and the bucket's representative sizes; a
config that breaks one is pruned before anything compiles. Shared-memory and
register limits come from :func:`maxsim_forge.codegen.validate`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..codegen import (
    ConfigError, KernelConfig, KernelSpec, exact_k_fits, next_pow2, partial_doc_tiles, query_programs, validate,
)
from .._keys import Sizes

SPACE: dict[str, tuple] = {
    "block_q": (16, 32, 64, 128, 256),
    "block_d": (16, 32, 64, 128),
    "block_k": (32, 64, 128, 256),
    "num_warps": (2, 4, 8),
    "num_stages": (1, 2, 3, 4),
    "q_mode": ("loop", "grid", "fold", "tile", "persist"),
    "split_d": (1, 2, 4, 8, 16),
    "exact_k": (False, True),
    "overlap_max": (False, True),
    "masked_loop": (False, True),
    "defer_max": (False, True),
}


def _rows(spec: KernelSpec, cfg: KernelConfig, s: Sizes) -> int:
    return s.nq * s.lq if cfg.q_mode in ("fold", "persist") else s.lq


def _programs(spec: KernelSpec, cfg: KernelConfig, s: Sizes) -> int:
    return query_programs(spec.layout, cfg, s.nq, s.lq) * s.nb


def _tall_tiles_walk_doc_tiles(cfg: KernelConfig, s: Sizes, *, tiles: int, rows: int) -> bool:
    """A program walks at least ``tiles`` doc tiles, with query tiles of ``rows`` or more."""
    return s.ld >= tiles * cfg.block_d * cfg.split_d and cfg.block_q >= rows


@dataclass(frozen=True)
class Restriction:
    """A rule of the space. ``knobs`` names every config field ``allows`` may read: the
    enumeration checks the rule as soon as those are chosen, pruning whole subtrees."""

    name: str
    reason: str
    allows: Callable[[KernelSpec, KernelConfig, Sizes, int], bool]
    knobs: tuple[str, ...] = ()


RESTRICTIONS: tuple[Restriction, ...] = (
    Restriction(
        "block_k_fits_dim",
        "a feature tile wider than the dim (rounded up to a power of two) only loads padding",
        lambda spec, cfg, s, sms: cfg.block_k <= max(16, next_pow2(spec.dim)),
        knobs=("block_k",),
    ),
    Restriction(
        "block_k_whole_dim_when_it_fits",
        "a dim that fits one tile (<= 256) is not split: each extra chunk re-loads the query "
        "tile (on H100 the whole-dim tile led every exhaustively timed bucket)",
        lambda spec, cfg, s, sms: spec.dim > 256 or cfg.block_k == max(16, next_pow2(spec.dim)),
        knobs=("block_k",),
    ),
    Restriction(
        "block_k_splits_dim_evenly",
        "a split dim with a partial last chunk spends a whole dot on padding",
        lambda spec, cfg, s, sms: cfg.block_k >= spec.dim or spec.dim % cfg.block_k == 0,
        knobs=("block_k",),
    ),
    Restriction(
        "exact_k_for_uneven_dims",
        "exact feature tiles only differ from one padded tile for a dim that is no power of two",
        lambda spec, cfg, s, sms: not cfg.exact_k or exact_k_fits(spec.dim),
        knobs=("exact_k",),
    ),
    Restriction(
        "overlap_needs_doc_tiles",
        "overlapping one tile's dot with the previous tile's max needs several doc tiles per "
        "program, and pays only where the dots dominate (32 or more query rows per tile)",
        lambda spec, cfg, s, sms: not cfg.overlap_max or _tall_tiles_walk_doc_tiles(cfg, s, tiles=4, rows=32),
        knobs=("overlap_max", "block_d", "split_d", "block_q"),
    ),
    Restriction(
        "masked_loop_needs_a_partial_tile",
        "one masked loop only differs from full tiles then a masked tail where a doc can end "
        "mid-tile (lengths, masks, packed docs, or a doc length that is no multiple of block_d)",
        lambda spec, cfg, s, sms: not cfg.masked_loop or partial_doc_tiles(spec, s.ld, cfg.block_d),
        knobs=("masked_loop", "block_d"),
    ),
    Restriction(
        "defer_needs_doc_tiles",
        "a running max of the score tiles only saves row maxes where a program walks several doc "
        "tiles, and pays only where the dots dominate (64 or more query rows per tile)",
        lambda spec, cfg, s, sms: not cfg.defer_max or _tall_tiles_walk_doc_tiles(cfg, s, tiles=2, rows=64),
        knobs=("defer_max", "block_d", "split_d", "block_q"),
    ),
    Restriction(
        "defer_or_overlap",
        "deferring the row max and overlapping it with the next dot are two ways to take the "
        "max off the dots' path; together they hold three score tiles",
        lambda spec, cfg, s, sms: not (cfg.defer_max and cfg.overlap_max),
        knobs=("defer_max", "overlap_max"),
    ),
    Restriction(
        "block_q_fits_rows",
        "a query tile much taller than the rows it covers computes padding",
        lambda spec, cfg, s, sms: cfg.block_q <= max(16, next_pow2(_rows(spec, cfg, s))),
        knobs=("block_q", "q_mode"),
    ),
    Restriction(
        "block_d_fits_doc",
        "a doc tile longer than the longest doc computes padding",
        lambda spec, cfg, s, sms: s.ld == 0 or cfg.block_d <= max(16, next_pow2(s.ld)),
        knobs=("block_d",),
    ),
    Restriction(
        "fold_needs_several_queries",
        "folding only pays with several shared queries",
        lambda spec, cfg, s, sms: cfg.q_mode != "fold" or (s.nq > 1 and spec.layout in ("allpairs", "packed")),
        knobs=("q_mode",),
    ),
    Restriction(
        "persist_for_folded_queries",
        "the persistent grid keeps a tile of folded query rows across padded docs: several "
        "shared queries (layout allpairs), whole docs (no split); its one loop masks every "
        "tile, so overlap_max and masked_loop, which shape the per-doc loop, do not apply",
        lambda spec, cfg, s, sms: cfg.q_mode != "persist" or (
            s.nq > 1 and spec.layout == "allpairs" and cfg.split_d == 1
            and not cfg.overlap_max and not cfg.masked_loop),
        knobs=("q_mode", "split_d", "overlap_max", "masked_loop"),
    ),
    Restriction(
        "loop_for_short_rows",
        "a loop over many query tiles re-reads the doc serially; long queries use the grid",
        lambda spec, cfg, s, sms: cfg.q_mode != "loop" or s.lq <= 4 * cfg.block_q,
        knobs=("q_mode", "block_q"),
    ),
    Restriction(
        "grid_needs_several_query_tiles",
        "a query that fits one tile gains nothing from spreading tiles over programs, "
        "and pays for an atomic sum",
        lambda spec, cfg, s, sms: cfg.q_mode != "grid" or s.lq > cfg.block_q,
        knobs=("q_mode", "block_q"),
    ),
    Restriction(
        "tile_for_one_query_tile",
        "straight-line tiles are for queries that fit one tile (a plain store); longer "
        "queries spread their tiles with grid, which skips the tiles past a short query",
        lambda spec, cfg, s, sms: cfg.q_mode != "tile" or s.lq <= cfg.block_q,
        knobs=("q_mode", "block_q"),
    ),
    Restriction(
        "split_needs_doc_tiles",
        "each doc split must get at least one doc tile",
        lambda spec, cfg, s, sms: cfg.split_d == 1 or (s.ld > 0 and cfg.split_d * cfg.block_d <= s.ld),
        knobs=("split_d", "block_d"),
    ),
    Restriction(
        "split_only_for_small_grids",
        "a grid that already fills the GPU twice over gains nothing from splitting docs",
        lambda spec, cfg, s, sms: cfg.split_d == 1 or _programs(spec, cfg, s) < 2 * sms,
        knobs=("split_d", "q_mode", "block_q"),
    ),
    Restriction(
        "big_tiles_need_warps",
        "a 128x128 score tile on two warps spills registers",
        lambda spec, cfg, s, sms: cfg.block_q * cfg.block_d < 128 * 128 or cfg.num_warps >= 4,
        knobs=("block_q", "block_d", "num_warps"),
    ),
)


@functools.lru_cache(maxsize=1)
def space_hash() -> str:
    """Hash of the search space: every knob's values and the restrictions by name.

    A winner stores it; ``tune --refresh`` tunes again the buckets whose winner was found
    in another space (a knob added since), seeded with that winner."""
    text = json.dumps({"space": {k: list(v) for k, v in SPACE.items()},
                       "restrictions": [r.name for r in RESTRICTIONS]}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1024)
def candidates_hash(spec: KernelSpec, sizes: Sizes, *, sm_count: int, smem_limit: int | None) -> str:
    """Hash of a bucket's candidates: the keys of every config of the space that passes the
    static checks at these sizes and device limits. A winner stores it (schema 6), so a
    space change that leaves a bucket's candidates as they were leaves its winner current."""
    keys = sorted(_hash_key(cfg) for cfg in valid_configs(spec, sizes, sm_count=sm_count, smem_limit=smem_limit))
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


def _hash_key(cfg: KernelConfig) -> str:
    """A config as the candidates hashes stored in databases spell it (the config key of
    schema 6, before variant names spelled every knob out): renaming configs for display
    must not make every stored winner look found in another space."""
    flags = (("exact_k", "-exact"), ("overlap_max", "-overlap"), ("masked_loop", "-mloop"), ("defer_max", "-defer"))
    return (f"q{cfg.block_q}-d{cfg.block_d}-k{cfg.block_k}-w{cfg.num_warps}-s{cfg.num_stages}-{cfg.q_mode}"
            f"-x{cfg.split_d}" + "".join(tag for name, tag in flags if getattr(cfg, name)))


def space_sizes(spec: KernelSpec, sizes: Sizes) -> str:
    """What a winner records of its bucket for :func:`in_current_space`: the mask kinds and
    the sizes it was tuned on."""
    return json.dumps({"q_mask": spec.q_mask, "d_mask": spec.d_mask, **dataclasses.asdict(sizes)}, sort_keys=True)


def in_current_space(row: dict) -> bool:
    """Whether a tuned database row was found among the candidates its bucket has in this
    package's search space (rows stored before schema 6: in the same whole space)."""
    if row.get("op", "fwd") == "bwd":
        from ._backward import space_id

        return row.get("space_hash") == space_id()
    recorded = row.get("space_sizes")
    if not recorded:
        return row.get("space_hash") == space_hash()
    try:
        d = json.loads(recorded)
        spec = KernelSpec(row["layout"], row["dtype"], int(row["dim"]), row["precision"], d["q_mask"], d["d_mask"],
                          row.get("codes", "none"))
        sizes = Sizes(nq=int(d["nq"]), lq=int(d["lq"]), nb=int(d["nb"]), ld=int(d["ld"]))
        current = candidates_hash(spec, sizes, sm_count=int(row["sm_count"]), smem_limit=row.get("smem_limit"))
    except (KeyError, TypeError, ValueError):  # a row this package cannot read back: tune it again
        return False
    return row.get("space_hash") == current


def check_static(
    spec: KernelSpec, cfg: KernelConfig, sizes: Sizes, *, sm_count: int, smem_limit: int | None
) -> str | None:
    """The reason ``cfg`` is pruned before compiling, or None if it may run."""
    for r in RESTRICTIONS:
        if not r.allows(spec, cfg, sizes, sm_count):
            return f"{r.name}: {r.reason}"
    try:
        validate(spec, cfg, smem_limit=smem_limit)
    except ConfigError as exc:
        return f"limits: {exc}"
    return None


def all_configs() -> Iterator[KernelConfig]:
    for values in itertools.product(*SPACE.values()):
        yield KernelConfig(**dict(zip(SPACE, values)))


# The order in which the enumeration chooses knobs: those the most rules read first, so
# a rule prunes a whole subtree as soon as its knobs are chosen; any other knob after them.
_CHOSEN_FIRST = ("block_k", "exact_k", "q_mode", "block_q", "block_d", "split_d")
_ENUMERATION_ORDER = _CHOSEN_FIRST + tuple(k for k in SPACE if k not in _CHOSEN_FIRST)


class _Partial:
    """The knobs chosen so far; reading one not chosen yet raises AttributeError."""

    __slots__ = tuple(SPACE)


def valid_configs(
    spec: KernelSpec, sizes: Sizes, *, sm_count: int, smem_limit: int | None = None
) -> list[KernelConfig]:
    """Every config of the space that passes the static checks for this bucket, in the
    order of the space's product (the result of :func:`check_static` on each, found by
    checking each rule once its knobs are chosen)."""
    order = _ENUMERATION_ORDER
    stage = {name: i for i, name in enumerate(order)}
    rules: list[list[Restriction]] = [[] for _ in order]
    for r in RESTRICTIONS:
        rules[max((stage[k] for k in r.knobs), default=0)].append(r)
    chosen = _Partial()
    found: list[KernelConfig] = []

    def walk(i: int) -> None:
        if i == len(order):
            cfg = KernelConfig(**{name: getattr(chosen, name) for name in SPACE})
            try:
                validate(spec, cfg, smem_limit=smem_limit)
            except ConfigError:
                return
            found.append(cfg)
            return
        for value in SPACE[order[i]]:
            setattr(chosen, order[i], value)
            if all(r.allows(spec, chosen, sizes, sm_count) for r in rules[i]):
                walk(i + 1)
        delattr(chosen, order[i])

    walk(0)
    rank = {name: {v: j for j, v in enumerate(values)} for name, values in SPACE.items()}
    found.sort(key=lambda c: tuple(rank[name][getattr(c, name)] for name in SPACE))
    return found


def neighbors(cfg: KernelConfig, valid: set[KernelConfig]) -> list[KernelConfig]:
    """Valid configs one knob away from ``cfg``: the adjacent value of an ordered knob,
    any other value of ``q_mode``. The tuner's refinement phase walks these."""
    out = []
    for name, values in SPACE.items():
        i = values.index(getattr(cfg, name))
        steps = range(len(values)) if name == "q_mode" else (i - 1, i + 1)
        for j in steps:
            if 0 <= j < len(values) and j != i:
                cand = dataclasses.replace(cfg, **{name: values[j]})
                if cand in valid:
                    out.append(cand)
    return out


def bucket_space(valid: list[KernelConfig]) -> dict[str, list]:
    """Per knob, the values some valid config of this bucket uses: the distributions the
    sampler draws from, so few proposals are pruned statically."""
    return {name: [v for v in values if any(getattr(c, name) == v for c in valid)] for name, values in SPACE.items()}


def sample_configs(
    spec: KernelSpec, sizes: Sizes, count: int, *, sm_count: int, seed: int = 0,
    smem_limit: int | None = None,
) -> list[KernelConfig]:
    configs = valid_configs(spec, sizes, sm_count=sm_count, smem_limit=smem_limit)
    random.Random(seed).shuffle(configs)
    return configs[:count]
