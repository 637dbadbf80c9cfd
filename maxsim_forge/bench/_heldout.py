"""Held-out shapes: realistic calls that no preset tuned, drawn from a seeded generator.

They measure what users mostly run: shapes the shipped databases were not tuned on,
served through the lookup chain (nearest bucket, same arch, heuristic). Query lengths
8 to 256, doc lengths 16 to 2048 and batches 1 to 20k are drawn in log space; dims 64,
96 and 128, every layout, full and ragged padded docs; a draw is redrawn while its
bucket is a preset's or its docs would take more than ``MAX_DOC_BYTES``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable

from .._keys import Sizes
from ._cases import Case

DIMS = (64, 96, 128)
LAYOUTS = ("padded", "allpairs", "packed", "pairs")
# Doc bytes one held-out case may allocate (fp16): keeps the set within a GPU's memory.
MAX_DOC_BYTES = 2 << 30


def _log_uniform(rng: random.Random, lo: int, hi: int) -> int:
    return int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))


def _preset_keys(buckets: Iterable) -> set[tuple]:
    return {(b.layout, b.dim, b.d_mask != "none", b.sizes.bucketed()) for b in buckets}


def draw(count: int, *, seed: int = 0, presets: Iterable = (), dtype: str = "fp16") -> list[Case]:
    """``count`` held-out cases, none in a bucket of ``presets`` (the tuner's Buckets),
    seeded: the same ``seed`` gives the same cases."""
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ValueError(f"count is {count!r}; accepted: a whole number >= 0")
    rng = random.Random(seed)
    taken = _preset_keys(presets)
    out: list[dict] = []
    while len(out) < count:
        layout = rng.choice(LAYOUTS)
        dim = rng.choice(DIMS)
        nq = rng.choice((2, 4, 8, 16)) if layout == "allpairs" else 1
        lq = _log_uniform(rng, 8, 256)
        ld = _log_uniform(rng, 16, 2048)
        nb = _log_uniform(rng, 1, 20_000)
        ragged = layout in ("padded", "allpairs") and rng.random() < 0.5
        sizes = Sizes(nq=nq, lq=lq, nb=nb, ld=ld)
        if (layout, dim, ragged, sizes.bucketed()) in taken:
            continue  # a tuned bucket: not held out
        if nb * ld * dim * 2 > MAX_DOC_BYTES:
            continue
        out.append(Case(name=f"heldout-{len(out):02d}-{layout}-lq{lq}-ld{ld}-nb{nb}-dim{dim}", layout=layout,
                        nq=nq, lq=lq, nb=nb, ld=ld, dim=dim, dtype=dtype, ragged=ragged))
    return out
