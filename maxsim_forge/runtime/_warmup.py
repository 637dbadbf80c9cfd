"""Compile ahead of time the variants the databases pick on this GPU."""

from __future__ import annotations

from dataclasses import replace

import torch

from .._keys import Sizes, gpu_info
from .._problems import synth
from ..codegen import KernelSpec
from . import _api
from ._keys import bucket_key

# Docs in the small problem each variant is compiled on (strides match the real bucket).
_WARM_DOCS = 4


def _targets(buckets: list[dict] | None, gpu_name: str) -> list[tuple[KernelSpec, Sizes]]:
    if buckets is not None:
        return [
            (
                KernelSpec(b["layout"], b["dtype"], int(b["dim"]), b.get("precision", "tf32"),
                           b.get("q_mask", "none"), b.get("d_mask", "none")),
                Sizes(nq=int(b.get("nq", 1)), lq=int(b["lq"]), nb=int(b["nb"]), ld=int(b["ld"])),
            )
            for b in buckets
        ]
    exact = [key for key in _api._lookup.load().exact if key[0] == gpu_name]
    full = {key[:-1] for key in exact if key[-1] == "full"}
    out = []
    for key in exact:
        name, layout, dtype, precision, dim, sizes, docs = key
        if layout not in ("padded", "allpairs") or docs == "full":
            masks = ("none",)
        elif docs == "ragged" and key[:-1] in full:
            masks = ("lengths",)  # ragged docs most often come with lengths
        else:  # full docs of this bucket route here too (or the row did not record its docs)
            masks = ("none", "lengths")
        out += [(KernelSpec(layout, dtype, dim, precision, "none", m), sizes) for m in masks]
    return out


def warmup(buckets: list[dict] | None = None, *, device: str | torch.device = "cuda") -> list[_api.Decision]:
    """Compile the variants this GPU would run, for ``buckets`` or every tuned one.

    A bucket is a dict of ``layout``, ``dtype``, ``dim``, ``lq``, ``ld``, ``nb`` and
    optionally ``nq``, ``precision``, ``q_mask``, ``d_mask``. Each variant is launched
    once on a few docs of the bucket's shape; returns the decisions.
    """
    device = torch.device(device)
    gpu = gpu_info(device)
    decisions = []
    for spec, sizes in _targets(buckets, gpu.name):
        small = synth(spec, sizes.scaled(_WARM_DOCS), device=str(device), seed=0).prep
        want = sizes.bucketed()
        key = replace(bucket_key(small, gpu), nq_bucket=want.nq, lq_bucket=want.lq, nb_bucket=want.nb,
                      ld_bucket=want.ld)
        _api._run(small, key, blocking=True)
        decisions.append(_api._route(small, key).decision())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return decisions
