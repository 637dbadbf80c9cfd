"""Compile ahead of time the variants the databases pick on this GPU."""

from __future__ import annotations

from dataclasses import replace

import torch

from .._keys import Sizes, gpu_info
from .._problems import synth
from ..codegen import ConfigError, KernelSpec
from . import _api
from ._keys import bucket_key
from ._limits import dim_error

# Docs in the small problem each variant is compiled on (strides match the real bucket).
_WARM_DOCS = 4
# A bucket's fields: the required ones, then the optional ones with their defaults.
_REQUIRED = ("layout", "dtype", "dim", "lq", "ld", "nb")
_OPTIONAL = {"nq": 1, "precision": "tf32", "q_mask": "none", "d_mask": "none", "codes": "none"}
_SIZES = ("dim", "nq", "lq", "ld", "nb")


def check_bucket(bucket: object, index: int = 0) -> tuple[KernelSpec, Sizes]:
    """A warmup bucket (a dict, as ``--bucket`` gives it) as a spec and sizes; a
    ``ValueError`` names the bucket, the field and what is accepted."""
    where = f"bucket {index}"
    accepted = f"{', '.join(_REQUIRED)} and optionally {', '.join(_OPTIONAL)}"
    if not isinstance(bucket, dict):
        raise ValueError(f"{where} is {type(bucket).__name__}; accepted: an object with {accepted}")
    unknown = sorted(set(bucket) - set(_REQUIRED) - set(_OPTIONAL))
    missing = [name for name in _REQUIRED if name not in bucket]
    if unknown or missing:
        what = f"has unknown field(s) {unknown}" if unknown else f"lacks {', '.join(missing)}"
        raise ValueError(f"{where} {what}; a bucket takes {accepted}")
    b = {**_OPTIONAL, **bucket}
    for name in _SIZES:
        if type(b[name]) is not int or b[name] < 1:
            raise ValueError(f"{where}: {name}={b[name]!r}; accepted: a positive integer")
    spec = KernelSpec(b["layout"], b["dtype"], b["dim"], b["precision"], b["q_mask"], b["d_mask"], b["codes"])
    try:
        spec.validate()
    except ConfigError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return spec, Sizes(nq=b["nq"], lq=b["lq"], nb=b["nb"], ld=b["ld"])


def _targets(buckets: list[dict] | None, gpu_name: str) -> list[tuple[KernelSpec, Sizes]]:
    if buckets is not None:
        return [check_bucket(b, i) for i, b in enumerate(buckets)]
    exact = [key for key in _api._lookup.load().exact if key[0] == gpu_name]
    full = {key[:-1] for key in exact if key[-1] == "full"}
    out = []
    for key in exact:
        name, layout, dtype, precision, dim, codes, op, sizes, docs = key
        if op == "bwd":
            continue  # the backward's kernels compile at the first backward
        if layout not in ("padded", "allpairs") or docs == "full":
            masks = ("none",)
        elif docs == "ragged" and key[:-1] in full:
            masks = ("lengths",)  # ragged docs most often come with lengths
        else:  # full docs of this bucket route here too (or the row did not record its docs)
            masks = ("none", "lengths")
        out += [(KernelSpec(layout, dtype, dim, precision, "none", m, codes), sizes) for m in masks]
    return out


def _check_device(device: torch.device) -> None:
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "warmup compiles kernels for a CUDA device and none is available here; call it on the "
            "machine that serves (with its GPU visible), or pass device='cpu' with TRITON_INTERPRET=1 "
            "to run the same steps through Triton's interpreter"
        )


def warmup(buckets: list[dict] | None = None, *, device: str | torch.device = "cuda") -> list[_api.Decision]:
    """Compile the variants this GPU would run, for ``buckets`` or every tuned one.

    A bucket is a dict of ``layout``, ``dtype``, ``dim``, ``lq``, ``ld``, ``nb`` and
    optionally ``nq``, ``precision``, ``q_mask``, ``d_mask``, ``codes`` (quantized docs:
    ``int8``, ``fp8``, ``int8xint8``, ``fp8xfp8``; a ``ValueError`` names a
    missing, unknown or bad field). Each variant is launched once on a few docs of the
    bucket's shape; returns the decisions. Without CUDA (and ``device="cuda"``), a
    ``RuntimeError`` says what to do.
    """
    device = torch.device(device)
    targets = _targets(buckets, "") if buckets is not None else None  # bad buckets fail before any work
    _check_device(device)
    gpu = gpu_info(device)
    decisions = []
    for spec, sizes in targets if targets is not None else _targets(None, gpu.name):
        if buckets is not None and (why := dim_error(spec.dtype, spec.dim, gpu.smem_limit)):
            raise ValueError(why)
        small = synth(spec, sizes.scaled(_WARM_DOCS), device=str(device), seed=0).prep
        want = sizes.bucketed()
        key = replace(bucket_key(small, gpu), nq_bucket=want.nq, lq_bucket=want.lq, nb_bucket=want.nb,
                      ld_bucket=want.ld)
        _api._run(small, key, blocking=True)
        decisions.append(_api._route(small, key).decision())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return decisions
