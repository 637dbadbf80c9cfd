"""Random MaxSim cases for every layout, with their float64 reference.

Every draw comes from the running test's seeded generator (``conftest.randn`` and
its siblings), so a case is the same on a rerun of its test and differs between tests.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

import torch

from maxsim_forge._inputs import Prepared, pack_pairs, prepare_packed, prepare_padded
from maxsim_forge.codegen import LAYOUTS, Q_MODES, ConfigError, KernelConfig, KernelSpec, next_pow2, validate
from maxsim_forge.reference import maxsim_packed_reference, maxsim_pairs_reference, maxsim_reference

from conftest import DEVICE, DTYPES, TOLERANCES, rand, randint, randn


def _lengths(count: int, limit: int, device: str) -> torch.Tensor:
    lengths = randint(0, limit + 1, (count,), device="cpu")
    if count > 1:
        lengths[0] = limit  # one full row, one empty row
        lengths[1] = 0
    return lengths.to(device)


def _mask(count: int, limit: int, device: str) -> torch.Tensor:
    mask = rand(count, limit, device="cpu") > 0.4
    if count > 1:
        mask[1] = False  # an all-masked row
    return mask.to(device)


def make_case(
    layout: str,
    dtype: str,
    *,
    nq: int = 2,
    lq: int = 33,
    nb: int = 3,
    ld: int = 57,
    dim: int = 96,
    q_kind: str = "none",
    d_kind: str = "none",
    precision: str = "tf32",
    device: str = DEVICE,
) -> tuple[Prepared, torch.Tensor]:
    """A checked call (ready for any variant) and its float64 reference.

    ``nq`` counts the shared queries of allpairs and packed calls; a padded call has one
    query (``[Lq, dim]``: several would make it allpairs) and pairs one per doc.
    """
    dt = DTYPES[dtype]
    nq = 1 if layout == "padded" else nq
    if layout == "pairs":
        q_lens = [lq, 1] + randint(0, lq + 1, (max(nb - 2, 0),), device="cpu").tolist()
        d_lens = [ld, 0] + randint(0, ld + 1, (max(nb - 2, 0),), device="cpu").tolist()
        queries = [randn(n, dim, dtype=dt, device=device) for n in q_lens[:nb]]
        docs = [randn(n, dim, dtype=dt, device=device) for n in d_lens[:nb]]
        return pack_pairs(queries, docs, precision=precision), maxsim_pairs_reference(queries, docs)
    shape_q = (lq, dim) if layout == "padded" else (nq, lq, dim)
    q = randn(*shape_q, dtype=dt, device=device)
    n = 1 if q.dim() == 2 else nq
    q_side = {}
    if q_kind == "lengths":
        q_side["q_lengths"] = _lengths(n, lq, device).reshape(()) if q.dim() == 2 else _lengths(n, lq, device)
    elif q_kind == "mask":
        q_side["q_mask"] = _mask(n, lq, device)[0] if q.dim() == 2 else _mask(n, lq, device)
    if layout == "packed":
        d_lens = _lengths(nb, ld, device).cpu()
        cu = torch.zeros(nb + 1, dtype=torch.int32)
        cu[1:] = d_lens.cumsum(0)
        d = randn(int(cu[-1]) + 5, dim, dtype=dt, device=device)  # trailing tokens belong to no doc
        cu = cu.to(device)
        prep = prepare_packed(q, d, cu, precision=precision, **q_side)
        return prep, maxsim_packed_reference(q, d, cu, **q_side)
    d = randn(nb, ld, dim, dtype=dt, device=device)
    d_side = {}
    if d_kind == "lengths":
        d_side["d_lengths"] = _lengths(nb, ld, device)
    elif d_kind == "mask":
        d_side["d_mask"] = _mask(nb, ld, device)
    prep = prepare_padded(q, d, precision=precision, **q_side, **d_side)
    return prep, maxsim_reference(q, d, **q_side, **d_side)


# ---- the corner sweep: every layout, query mode and knob, in a covering design
#
# Each (layout, q_mode the layout takes) runs with no knob, with every knob on alone and
# with one combination; tiles, doc split, dim, dtype, sizes and masks rotate over those
# runs, so every value of each meets every mode and every knob (tests/test_maxsim_fwd.py
# checks that). A proposal that codegen.validate rejects moves on to the next doc split,
# dim, then tile, and is counted.

KNOBS = ("exact_k", "overlap_max", "masked_loop", "defer_max")
# overlap_max and defer_max exclude each other; any other combination validates.
KNOB_COMBOS = (("exact_k", "masked_loop", "overlap_max"), ("exact_k", "defer_max"), ("defer_max", "masked_loop"))


@dataclass(frozen=True)
class Tile:
    """A tile shape; ``block_k`` is ``min`` (16: the dim in several chunks), ``half``
    (two chunks) or ``whole`` (the dim rounded up to a power of two, as exact_k needs)."""

    name: str
    block_q: int
    block_d: int
    block_k: str
    num_warps: int
    num_stages: int


TILES = (
    Tile("smallest", 16, 16, "min", 1, 1),
    Tile("largest", 256, 128, "whole", 16, 1),
    Tile("tall", 128, 16, "half", 4, 3),
    Tile("wide", 16, 128, "whole", 2, 2),
    Tile("mid", 32, 32, "whole", 4, 4),
)
SPLITS = (1, 2, 4)
DIMS = (48, 96, 100)  # 32 + 16, 64 + 32, and a dim that is no multiple of 16
# (nq, lq, nb, ld): odd sizes; docs of several tiles, of a partial one and of one token
SIZES = ((3, 33, 3, 70), (2, 7, 5, 61), (3, 1, 4, 33), (2, 33, 3, 7), (3, 7, 2, 1))
_BOTH_SIDES = (("lengths", "mask"), ("mask", "lengths"), ("none", "none"), ("mask", "mask"), ("lengths", "lengths"))
MASKS = {  # (q_kind, d_kind) per layout: packed and pairs take doc extents from offsets
    "padded": _BOTH_SIDES,
    "allpairs": _BOTH_SIDES,
    "packed": (("mask", "none"), ("lengths", "none"), ("none", "none")),
    "pairs": (("none", "none"),),
}


@dataclass(frozen=True)
class Variant:
    """One run of the sweep: a layout, a config that validates for it, and its case."""

    layout: str
    cfg: KernelConfig
    knobs: tuple[str, ...]
    tile: str
    dtype: str
    precision: str
    tol: float
    dim: int
    sizes: tuple[int, int, int, int]
    q_kind: str
    d_kind: str

    def __str__(self) -> str:
        nq, lq, nb, ld = self.sizes
        return (f"{self.layout}-{self.cfg.key()}-{self.dtype}-{self.precision}-dim{self.dim}"
                f"-nq{nq}-lq{lq}-nb{nb}-ld{ld}-q{self.q_kind}-d{self.d_kind}")

    def spec(self) -> KernelSpec:
        return KernelSpec(self.layout, self.dtype, self.dim, self.precision, self.q_kind, self.d_kind)

    def case(self) -> tuple[Prepared, torch.Tensor]:
        nq, lq, nb, ld = self.sizes
        return make_case(self.layout, self.dtype, nq=nq, lq=lq, nb=nb, ld=ld, dim=self.dim,
                         q_kind=self.q_kind, d_kind=self.d_kind, precision=self.precision)


def takes(layout: str, q_mode: str) -> bool:
    """Whether codegen accepts ``q_mode`` for ``layout`` (on a plain spec and config)."""
    try:
        validate(KernelSpec(layout, "fp16", 64), KernelConfig(block_k=64, q_mode=q_mode))
    except ConfigError:
        return False
    return True


def _block_k(tile: Tile, dim: int, exact_k: bool) -> int:
    whole = max(16, next_pow2(dim))  # exact_k takes only this one
    return whole if exact_k else {"min": 16, "half": max(16, whole // 2), "whole": whole}[tile.block_k]


def _first_valid(base: Variant, m: int, j: int, skipped: Counter) -> Variant:
    """The first variant, from this run's place in each rotation on, that validates:
    the tile changes last, the doc split first. ``skipped`` counts the proposals that
    validate rejects, by the knob its message names first."""
    for t in range(len(TILES)):
        tile = TILES[(j + m + t) % len(TILES)]
        for dd in range(len(DIMS)):
            dim = DIMS[(2 * j + m + dd) % len(DIMS)]
            for s in range(len(SPLITS)):
                cfg = replace(base.cfg, block_q=tile.block_q, block_d=tile.block_d,
                              block_k=_block_k(tile, dim, base.cfg.exact_k), num_warps=tile.num_warps,
                              num_stages=tile.num_stages, split_d=SPLITS[(j + 2 * m + s) % len(SPLITS)])
                v = replace(base, cfg=cfg, tile=tile.name, dim=dim)
                try:
                    validate(v.spec(), cfg)
                except ConfigError as exc:
                    skipped[str(exc).split("=")[0].split(" ")[0]] += 1
                    continue
                return v
    raise AssertionError(f"no tile, dim or split validates for {base.layout} {base.cfg.q_mode} {base.knobs}")


def sweep_variants() -> tuple[list[Variant], Counter]:
    """The sweep's variants, and how many proposals validate rejected (by the knob named)."""
    variants: list[Variant] = []
    skipped: Counter = Counter()
    runs = [(layout, mode) for layout in LAYOUTS for mode in Q_MODES if takes(layout, mode)]
    for m, (layout, mode) in enumerate(runs):
        for j, knobs in enumerate([(), *((k,) for k in KNOBS), KNOB_COMBOS[m % len(KNOB_COMBOS)]]):
            dtype, precision, tol = TOLERANCES[(5 * m + j) % len(TOLERANCES)]
            q_kind, d_kind = MASKS[layout][(j + 2 * m) % len(MASKS[layout])]
            nq, lq, nb, ld = SIZES[(j + 3 * m) % len(SIZES)]
            nq = nq if layout in ("allpairs", "packed") else 1  # make_case's count for the others
            base = Variant(layout, KernelConfig(q_mode=mode, **{k: True for k in knobs}), knobs, "", dtype,
                           precision, tol, 0, (nq, lq, nb, ld), q_kind, d_kind)
            variants.append(_first_valid(base, m, j, skipped))
    return variants, skipped
