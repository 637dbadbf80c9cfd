"""Random MaxSim cases for every layout, with their float64 reference.

Every draw comes from the running test's seeded generator (``conftest.randn`` and
its siblings), so a case is the same on a rerun of its test and differs between tests.
"""

from __future__ import annotations

import torch

from maxsim_forge._inputs import Prepared, pack_pairs, prepare_packed, prepare_padded
from maxsim_forge.reference import maxsim_packed_reference, maxsim_pairs_reference, maxsim_reference

from conftest import DEVICE, DTYPES, rand, randint, randn


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
