"""GPU keys and shape buckets: cheap to compute on every call."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .._inputs import Prepared
from ..codegen import next_pow2
from ..tuned_db import BucketKey


@dataclass(frozen=True)
class GpuInfo:
    """The device's name as vLLM normalises it, and the limits fallbacks compare."""

    name: str
    cc: str
    sm_count: int
    smem_limit: int


# Stand-in for the interpreter: tuned like a small GPU, never matched to a real one.
INTERPRETER = GpuInfo("TRITON_INTERPRETER", "0.0", 4, 232_448)


def normalize_name(name: str) -> str:
    return name.replace(" ", "_")


@functools.lru_cache(maxsize=16)
def gpu_info(device: torch.device | str) -> GpuInfo:
    device = torch.device(device)
    if device.type != "cuda":
        return INTERPRETER
    props = torch.cuda.get_device_properties(device)
    smem = getattr(props, "shared_memory_per_block_optin", 0) or 232_448
    return GpuInfo(
        name=normalize_name(props.name),
        cc=f"{props.major}.{props.minor}",
        sm_count=props.multi_processor_count,
        smem_limit=int(smem),
    )


def bucket(x: int) -> int:
    """Powers of two: 0, 1, 2, 4, 8, ... (the smallest power of two >= x)."""
    return 0 if x <= 0 else next_pow2(x)


def bucket_sizes(prep: Prepared) -> tuple[int, int, int, int]:
    """(nq, lq, ld, nb) buckets of a call.

    Packed docs bucket by their mean length, which the host knows without reading
    ``cu_seqlens``; pairs by the longest doc, known when they are packed.
    """
    k = prep.launch_kwargs
    ld = k["ld"]
    if prep.spec.layout == "packed" or (prep.spec.layout == "pairs" and not ld):
        ld = -(-prep.d.shape[0] // max(k["nb"], 1))
    return bucket(k["nq"]), bucket(k["lq"]), bucket(ld), bucket(k["nb"])


def doc_fill(spec) -> str:
    """"ragged" where padded docs carry lengths or a mask, else "full" (packed docs and
    pairs have no padding): full tiles skip every token mask and prefer other tiles."""
    return "ragged" if spec.layout in ("padded", "allpairs") and spec.d_mask != "none" else "full"


def bucket_key(prep: Prepared, gpu: GpuInfo) -> BucketKey:
    nq, lq, ld, nb = bucket_sizes(prep)
    spec = prep.spec
    return BucketKey(gpu.name, gpu.cc, spec.layout, spec.dtype, spec.precision, spec.dim, nq, lq, ld, nb,
                     doc_fill(spec))
