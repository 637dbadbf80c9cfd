"""What every layer keys tuned results by, and the one rule for the nearest tuned bucket.

The GPU's identity, the four sizes of a call (always in the order ``nq, lq, nb, ld``
of the launch arguments, always passed by name) and their buckets, the key a tuned
result is stored under, and :func:`nearest`, which the runtime's lookup, the tuner's
seeds and the vLLM config reader all rank tuned buckets by.

The runtime imports this on every call path, so it stays cheap: torch, the standard
library and codegen (which the runtime loads anyway); never the tuner or Optuna.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch

from .codegen import DEFAULT_SMEM_LIMIT, DTYPES, KernelConfig, KernelSpec, next_pow2, torch_dtype

# A tensor's dtype -> the name keys, files and the CLI write (codegen's dtype table read
# the other way round).
DTYPE_NAMES: dict[torch.dtype, str] = {torch_dtype(name): name for name in DTYPES}
# Dtypes the entry points take besides: scored by the torch path only (float64: for
# checks such as gradcheck), the result in that dtype.
TORCH_ONLY_DTYPES: dict[torch.dtype, str] = {torch.float64: "fp64"}


# ---- the GPU
@dataclass(frozen=True)
class GpuInfo:
    """The device's name as vLLM normalises it, and the limits fallbacks compare."""

    name: str
    cc: str
    sm_count: int
    smem_limit: int


# Stand-in for the interpreter: tuned like a small GPU, never matched to a real one.
INTERPRETER = GpuInfo(name="TRITON_INTERPRETER", cc="0.0", sm_count=4, smem_limit=DEFAULT_SMEM_LIMIT)


def normalize_name(name: str) -> str:
    return name.replace(" ", "_")


@functools.lru_cache(maxsize=16)
def gpu_info(device: torch.device | str) -> GpuInfo:
    device = torch.device(device)
    if device.type != "cuda":
        return INTERPRETER
    props = torch.cuda.get_device_properties(device)
    smem = getattr(props, "shared_memory_per_block_optin", 0) or DEFAULT_SMEM_LIMIT
    return GpuInfo(
        name=normalize_name(props.name),
        cc=f"{props.major}.{props.minor}",
        sm_count=props.multi_processor_count,
        smem_limit=int(smem),
    )


# ---- sizes and buckets
def bucket(x: int) -> int:
    """Powers of two: 0, 1, 2, 4, 8, ... (the smallest power of two >= x)."""
    return 0 if x <= 0 else next_pow2(x)


@dataclass(frozen=True, kw_only=True)
class Sizes:
    """The four sizes of a call: queries, query length, docs, doc length (padded or max).

    Exact sizes of a problem, or their buckets (:meth:`bucketed`, :attr:`BucketKey.sizes`).
    """

    nq: int
    lq: int
    nb: int
    ld: int

    def scaled(self, nb: int) -> Sizes:
        """The same sizes with at most ``nb`` docs."""
        return Sizes(nq=self.nq, lq=self.lq, nb=min(self.nb, nb), ld=self.ld)

    def bucketed(self) -> Sizes:
        return Sizes(nq=bucket(self.nq), lq=bucket(self.lq), nb=bucket(self.nb), ld=bucket(self.ld))


def shape_label(layout: str, dtype: str, dim: int, buckets: Sizes, docs: str = "full", codes: str = "none",
                op: str = "fwd") -> str:
    """A bucket as ``db show``, ``tune`` and ``explain`` write it:
    ``padded/fp16/dim128 nq1 lq32 nb1024 ld512 ragged``; quantized docs add their codes
    after the dim (``padded/fp16/dim128/int8xint8 ...``)."""
    fill = {"full": "", "": " any-docs"}.get(docs, f" {docs}")
    coded = "" if codes == "none" else f"/{codes}"
    backward = " backward" if op == "bwd" else ""
    return (f"{layout}/{dtype}/dim{dim}{coded} nq{buckets.nq} lq{buckets.lq} "
            f"nb{buckets.nb} ld{buckets.ld}{fill}{backward}")


def doc_fill(spec: KernelSpec) -> str:
    """"ragged" where padded docs carry lengths or a mask, else "full" (packed docs and
    pairs have no padding): full tiles skip every token mask and prefer other tiles."""
    return "ragged" if spec.layout in ("padded", "allpairs") and spec.d_mask != "none" else "full"


@dataclass(frozen=True, kw_only=True)
class BucketKey:
    """Where a result belongs: the GPU and the shape bucket."""

    gpu: str
    cc: str
    layout: str
    dtype: str
    precision: str
    dim: int
    nq_bucket: int
    lq_bucket: int
    nb_bucket: int
    ld_bucket: int
    # "full": every doc fills its padded length; "ragged": docs carry lengths or masks;
    # "": not recorded (rows tuned before the key had it).
    docs: str = "full"
    # How the docs (and the query) are stored: codegen's CODES; "none" for float docs.
    codes: str = "none"
    # The kernel: "fwd" (the scores) or "bwd" (the backward's winners kernel).
    op: str = "fwd"

    @property
    def sizes(self) -> Sizes:
        """The four size buckets."""
        return Sizes(nq=self.nq_bucket, lq=self.lq_bucket, nb=self.nb_bucket, ld=self.ld_bucket)

    def as_row(self) -> dict:
        return dict(self.__dict__)

    def label(self) -> str:
        return shape_label(self.layout, self.dtype, self.dim, self.sizes, self.docs, self.codes, self.op)

    @classmethod
    def from_row(cls, row: dict) -> BucketKey:
        """The key of a database or export row; rows from before ``docs`` was recorded get "",
        rows from before ``codes`` existed "none"."""
        absent = {"docs": "", "codes": "none", "op": "fwd"}
        return cls(**{k: row.get(k, absent[k]) if k in absent else row[k] for k in cls.__dataclass_fields__})


# ---- the nearest tuned bucket
@dataclass(frozen=True, kw_only=True)
class Entry:
    """A tuned config and the bucket it was tuned for: what :func:`nearest` ranks."""

    sizes: Sizes  # the four size buckets of its row
    config: KernelConfig
    docs: str = "full"  # as BucketKey.docs
    source: str = ""  # where it was read from (the lookup's user-db or shipped-db)
    gpu: str = ""
    stamp: tuple = ()  # what it was tuned with, for a caller that judges its currency
    row: dict | None = field(default=None, compare=False, repr=False)  # the row it came from

    def is_bucket(self, want: Sizes, docs: str) -> bool:
        """Tuned for this very bucket: on docs of this kind, or on unrecorded ones."""
        return self.sizes == want and self.docs in (docs, "")


# How much one doubling of each size counts: doc and query lengths weigh more than counts.
_WEIGHTS = {"nq": 1.0, "lq": 2.0, "nb": 1.0, "ld": 2.0}


def bucket_distance(a: Sizes, b: Sizes) -> float:
    """Between two buckets: L1 in log2 space, weighted per size."""
    return sum(w * abs(math.log2(max(getattr(a, n), 1)) - math.log2(max(getattr(b, n), 1)))
               for n, w in _WEIGHTS.items())


def docs_distance(have: str, want: str) -> float:
    """Full docs against ragged ones count as one doubling of the batch apart; a row that
    did not record its docs ("", tuned before the key had them) as half of that."""
    return 0.0 if have == want else 0.5 if have == "" else 1.0


def query_tile_limit(*, nq: int, lq: int) -> int | None:
    """The tallest query tile a neighbour of a call may have: a query set's folded rows
    (``nq * lq`` to a power of two); None for one query, where any height may serve."""
    return bucket(max(nq * lq, 1)) if nq > 1 else None


def nearest(
    entries: Iterable[Entry],
    want: Sizes,
    *,
    docs: str,
    tallest: int | None = None,
    usable: Callable[[Entry], bool] | None = None,
    own_bucket: bool = True,
) -> Iterator[Entry]:
    """The entries that may serve a call of buckets ``want`` on ``docs``, best first.

    With ``own_bucket``, rows of the bucket itself (:meth:`Entry.is_bucket`) come first,
    those tuned on such docs before those that did not record theirs. Then neighbours,
    nearest first (:func:`bucket_distance` plus :func:`docs_distance`; ties keep the order
    of ``entries``, so list the preferred source first), and only those with as many
    queries in kind as the call (one, or a set: a config tuned for one query walks a set
    one query at a time and cannot fold it) and no query tile taller than ``tallest``
    (:func:`query_tile_limit`: a taller tile computes padding rows). ``usable`` (say,
    the row still runs the kernels it was timed with, and fits the device) is asked of
    each candidate in that order, only as far as the caller iterates.
    """
    entries = list(entries)
    own = [e for e in entries if own_bucket and e.is_bucket(want, docs)]
    own.sort(key=lambda e: e.docs != docs)
    is_set = want.nq > 1
    near = [e for e in entries
            if not (own_bucket and e.is_bucket(want, docs)) and (e.sizes.nq > 1) == is_set
            and (tallest is None or e.config.block_q <= tallest)]
    near.sort(key=lambda e: bucket_distance(e.sizes, want) + docs_distance(e.docs, docs))
    for entry in (*own, *near):
        if usable is None or usable(entry):
            yield entry


__all__ = [
    "DEFAULT_SMEM_LIMIT",
    "DTYPE_NAMES",
    "TORCH_ONLY_DTYPES",
    "INTERPRETER",
    "BucketKey",
    "Entry",
    "GpuInfo",
    "Sizes",
    "bucket",
    "shape_label",
    "bucket_distance",
    "doc_fill",
    "docs_distance",
    "gpu_info",
    "nearest",
    "normalize_name",
    "query_tile_limit",
]
