"""The torch path that scores calls while a kernel compiles (runtime/_eager.py)."""

from __future__ import annotations

import pytest
import torch

from maxsim_forge._inputs import pack_pairs, prepare_packed, prepare_padded
from maxsim_forge.reference import reference_for
from maxsim_forge.runtime import _eager
from maxsim_forge.runtime._eager import eager_scores

from conftest import DEVICE, DTYPES, assert_scores, rand, randn


def _check(prep, what):
    out = eager_scores(prep)
    assert_scores(out, reference_for(prep), 1e-5, what, scale=reference_for(prep, absolute=True))


@pytest.mark.parametrize("dtype", ("fp16", "bf16", "fp32"))
@pytest.mark.parametrize("nq", (1, 3))
@pytest.mark.parametrize("sides", ("plain", "lengths", "masks"))
def test_padded(dtype, nq, sides):
    dt = DTYPES[dtype]
    q = randn(nq, 7, 96, dtype=dt) if nq > 1 else randn(33, 96, dtype=dt)
    d = randn(9, 13, 96, dtype=dt)
    kw = {}
    if sides == "lengths":
        kw["d_lengths"] = torch.tensor([13, 0, 1, 7, 2, 13, 5, 9, 3], device=DEVICE)
        if nq > 1:
            kw["q_lengths"] = torch.tensor([7, 0, 3], device=DEVICE)
    elif sides == "masks":
        kw["d_mask"] = rand(9, 13) > 0.5
        kw["d_mask"][2] = False  # a doc with no valid token scores 0
        kw["q_mask"] = rand(*q.shape[:-1]) > 0.3
    _check(prepare_padded(q, d, **kw), f"padded {dtype} nq={nq} {sides}")


@pytest.mark.parametrize("max_doc_len", (None, 40))
def test_packed(max_doc_len):
    cu = torch.tensor([0, 5, 5, 17, 57], dtype=torch.int32, device=DEVICE)
    q = randn(2, 9, 64)
    _check(prepare_packed(q, randn(57, 64), cu, max_doc_len=max_doc_len), "packed")


def test_pairs():
    queries = [randn(n, 64, dtype=torch.bfloat16) for n in (1, 5, 32, 3)]
    docs = [randn(n, 64, dtype=torch.bfloat16) for n in (7, 1, 300, 2)]
    _check(pack_pairs(queries, docs), "pairs")


@pytest.mark.parametrize("limit", ("_CHUNK", "_BYTES"))
def test_chunks_cover_every_doc(monkeypatch, limit):
    # A chunk of one doc at a time, by scores or by bytes of rows, must give what one chunk gives.
    monkeypatch.setattr(_eager, limit, 1)
    q, d = randn(3, 5, 32), randn(6, 11, 32)
    _check(prepare_padded(q, d, d_lengths=torch.tensor([11, 0, 3, 4, 5, 6], device=DEVICE)), "chunked padded")
    cu = torch.tensor([0, 2, 9, 9, 20], dtype=torch.int32, device=DEVICE)
    _check(prepare_packed(q[0], randn(20, 32), cu), "chunked packed")
    _check(pack_pairs([randn(4, 32), randn(2, 32)], [randn(3, 32), randn(8, 32)]), "chunked pairs")


def test_chunks_bound_scores_and_gathered_rows():
    # One query token against long docs: the rows gathered per chunk, not the scores, bind.
    step = _eager._step(1 * 1 * 512, (512, 128 * 2))
    assert step * 512 * 128 * 2 <= _eager._BYTES and step * 512 <= _eager._CHUNK
    assert _eager._step(10**12, (10**9, 10**6)) == 1
