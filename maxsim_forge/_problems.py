"""Random problems of a given spec and size, with their float64 reference.

The tuner checks every candidate on a fresh one of these before timing it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ._inputs import Prepared, pack_pairs, pack_quantized_pairs, prepare_packed, prepare_padded
from .quant import QuantizedDocs, quantize
from ._keys import Sizes
from .codegen import KernelSpec, torch_dtype
from .reference import maxsim_packed_reference, maxsim_pairs_reference, maxsim_reference, reference_for


def tolerance(spec: KernelSpec) -> float:
    """Max error a kernel may show against float64, relative to the magnitude of the terms
    it adds up (the reference with ``absolute=True``; :func:`relative_error`): products
    of fp16/bf16 inputs are exact in fp32, tf32 rounds its inputs to 10 mantissa bits, and
    Hopper's fp8 tensor cores sum a dot's products in fewer bits than fp32 (Triton's
    default for fp8 on sm_90; seen up to 5.4e-5 on an H100)."""
    if spec.query_codes == "fp8":
        return 1e-4
    return 3e-3 if spec.dtype == "fp32" and spec.precision == "tf32" else 1e-5


@dataclass
class Problem:
    prep: Prepared
    reference: object  # () -> float64 tensor in the launcher's output shape

    def expected(self) -> torch.Tensor:
        ref = self.reference()
        return ref[None] if self.prep.squeeze else ref

    def scale(self) -> float:
        """The largest magnitude of the terms a score adds up (the reference with
        ``absolute=True``): what kernel errors are measured against."""
        ref = reference_for(self.prep, absolute=True)
        return float(ref.abs().max()) if ref.numel() else 1.0


def first_docs(prep: Prepared, nb: int) -> Prepared:
    """The same call on its first ``nb`` docs (pairs: its first ``nb`` pairs), as views:
    no data is copied, and the other docs stay allocated but unread."""
    k = dict(prep.launch_kwargs)
    nb = max(0, min(nb, k["nb"]))
    k["nb"] = nb
    for name in ("q_cu", "d_cu"):
        if k.get(name) is not None:
            k[name] = k[name][: nb + 1]
    for name in ("d_lengths", "d_mask"):
        if k.get(name) is not None:
            k[name] = k[name][:nb]
    d = prep.d if prep.spec.layout in ("packed", "pairs") else prep.d[:nb]
    if k.get("d_scales") is not None and prep.spec.layout not in ("packed", "pairs"):
        k["d_scales"] = k["d_scales"][:nb]
    return dataclasses.replace(prep, d=d, launch_kwargs=k)


def relative_error(out: torch.Tensor, ref: torch.Tensor, scale: float) -> float:
    """max |out - ref| / scale; NaN when anything is NaN (so it never passes a tolerance)."""
    if ref.numel() == 0:
        return 0.0
    return float((out.double() - ref.double()).abs().max()) / max(scale, 1e-30)


def _lengths(count: int, limit: int, gen: torch.Generator, skew: bool) -> torch.Tensor:
    if skew:  # many short docs, a few long ones
        u = torch.rand(count, generator=gen)
        return (1 + (limit - 1) * u.pow(3)).long()
    return torch.randint(max(1, limit // 2), limit + 1, (count,), generator=gen)


def synth(
    spec: KernelSpec,
    sizes: Sizes,
    *,
    device: str,
    seed: int,
    skew: bool = False,
) -> Problem:
    """A problem of ``spec`` with ``sizes``: fresh random embeddings, ragged lengths.

    On ``device="meta"`` only the shapes and lengths are made (no embeddings, no value
    checks): enough for the bucket key, at no cost.
    """
    gen = torch.Generator().manual_seed(seed)  # embeddings
    lgen = torch.Generator().manual_seed(seed + 1)  # lengths and masks: the same with or without embeddings
    dt = torch_dtype(spec.dtype)
    nq, lq, nb, ld, dim = sizes.nq, sizes.lq, sizes.nb, sizes.ld, spec.dim
    meta = device == "meta"

    def rand(*shape):
        if meta:
            return torch.empty(*shape, dtype=dt, device="meta")
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dt)

    if spec.layout == "pairs":
        return _pairs_problem(spec, sizes, rand, lgen, skew, meta)
    q = rand(nq, lq, dim) if spec.layout != "padded" else rand(lq, dim)
    q_side: dict = {}
    if spec.q_mask == "lengths":
        qlen = _lengths(nq, lq, lgen, False).to(device)
        q_side["q_lengths"] = qlen if q.dim() == 3 else qlen.reshape(())
    elif spec.q_mask == "mask":
        qm = (torch.rand(nq, lq, generator=lgen) > 0.2).to(device)
        q_side["q_mask"] = qm if q.dim() == 3 else qm[0]
    if spec.layout == "packed":
        lens = _lengths(nb, ld, lgen, skew)
        cu = torch.zeros(nb + 1, dtype=torch.int32)
        cu[1:] = lens.cumsum(0)
        d = rand(int(cu[-1]), dim)
        cu = cu.to(device)
        if spec.doc_codes:
            prep = prepare_packed(q, _coded(d, spec, meta), cu, max_doc_len=ld, precision=_precision(spec),
                                  check_values=not meta, quantize_query=spec.query_codes is not None, **q_side)
            return Problem(prep, lambda: reference_for(prep))
        prep = prepare_packed(q, d, cu, max_doc_len=ld, precision=_precision(spec), check_values=not meta, **q_side)
        return Problem(prep, lambda: maxsim_packed_reference(q, d, cu, **q_side))
    d = rand(nb, ld, dim)
    d_side: dict = {}
    if spec.d_mask == "lengths":
        d_side["d_lengths"] = _lengths(nb, ld, lgen, skew).to(device)
    elif spec.d_mask == "mask":
        d_side["d_mask"] = (torch.rand(nb, ld, generator=lgen) > 0.2).to(device)
    if spec.doc_codes:
        padding = {"lengths": d_side.get("d_lengths"), "mask": d_side.get("d_mask")}
        prep = prepare_padded(q, _coded(d, spec, meta, **padding), precision=_precision(spec),
                              check_values=not meta, quantize_query=spec.query_codes is not None, **q_side, **d_side)
        return Problem(prep, lambda: reference_for(prep))
    prep = prepare_padded(q, d, precision=_precision(spec), check_values=not meta, **q_side, **d_side)
    return Problem(prep, lambda: maxsim_reference(q, d, **q_side, **d_side))


def _pairs_problem(spec: KernelSpec, sizes: Sizes, rand, lgen: torch.Generator, skew: bool, meta: bool) -> Problem:
    """Aligned pairs: the longest query and doc are the sizes given (they bucket pairs)."""
    nb, lq, ld, dim = sizes.nb, sizes.lq, sizes.ld, spec.dim
    q_lens = [lq, *_lengths(nb - 1, lq, lgen, skew).tolist()][:nb]
    d_lens = [ld, *_lengths(nb - 1, ld, lgen, skew).tolist()][:nb]
    queries = [rand(n, dim) for n in q_lens]
    docs = [rand(n, dim) for n in d_lens]
    if spec.doc_codes:
        coded = _coded(torch.cat(docs), spec, meta)
        ends = torch.tensor([0, *d_lens]).cumsum(0).tolist()
        coded_docs = [coded[ends[i]:ends[i + 1]] for i in range(nb)]
        prep = pack_quantized_pairs(queries, coded_docs, precision=_precision(spec),
                                    quantize_query=spec.query_codes is not None)
        return Problem(prep, lambda: reference_for(prep))
    prep = pack_pairs(queries, docs, precision=_precision(spec))
    return Problem(prep, lambda: maxsim_pairs_reference(queries, docs))


def _coded(d: torch.Tensor, spec: KernelSpec, meta: bool, **padding) -> QuantizedDocs:
    """Docs in the spec's code format (on "meta", codes and scales of the right shapes)."""
    fmt = "int8" if spec.doc_codes == "int8" else "fp8_e4m3"
    if meta:
        codes = torch.empty(d.shape, dtype=torch.int8 if fmt == "int8" else torch.float8_e4m3fn, device="meta")
        return QuantizedDocs._of(codes, torch.empty(d.shape[:-1], dtype=torch.float32, device="meta"), fmt)
    return quantize(d, fmt, **padding)


def _precision(spec: KernelSpec) -> str:
    return spec.precision if spec.dtype == "fp32" else "tf32"
