"""PyLate's scoring functions through maxsim-forge (maxsim_forge/integrations/pylate.py):
PyLate's documented examples, its torch formulas (masks multiply the similarities) on
random batches, gradients, and install/uninstall on a stand-in pylate package."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from maxsim_forge.integrations import pylate as mf_pylate

from conftest import DEVICE, randn


def _t(x):
    return torch.tensor(x, device=DEVICE)


Q = [[[1.], [0.], [0.], [0.]], [[0.], [2.], [0.], [0.]], [[0.], [0.], [3.], [0.]]]
Q_MASK = [[1., 1., 1., 1.], [1., 1., 1., 1.], [1., 1., 0., 1.]]


def test_pylate_documented_examples(isolated_lookup):
    d = _t([[[10.], [0.], [1.]], [[0.], [100.], [10.]], [[1.], [0.], [1000.]]])
    d_mask = _t([[1., 1., 1.], [1., 0., 1.], [1., 1., 1.]])
    got = mf_pylate.colbert_scores(_t(Q), d, _t(Q_MASK), d_mask)
    assert got.tolist() == [[10., 10., 1000.], [20., 20., 2000.], [0., 0., 0.]]
    d = _t([[[10.], [0.], [1.]], [[0.], [100.], [1.]], [[1.], [0.], [1000.]]])
    assert mf_pylate.colbert_scores_pairwise(_t(Q), d).tolist() == [10., 200., 3000.]
    d = _t([[[[10.], [0.], [1.]], [[20.], [0.], [1.]], [[30.], [0.], [1.]]],
            [[[0.], [100.], [1.]], [[0.], [200.], [1.]], [[0.], [300.], [1.]]],
            [[[1.], [0.], [1000.]], [[1.], [0.], [2000.]], [[10.], [0.], [3000.]]]])
    d_mask = _t([[[0., 1., 1.], [1., 1., 1.], [1., 1., 1.]], [[1., 1., 1.]] * 3, [[1., 1., 1.]] * 3])
    got = mf_pylate.colbert_kd_scores(_t(Q), d, _t(Q_MASK), d_mask)
    assert got.tolist() == [[1., 20., 30.], [200., 400., 600.], [0., 0., 0.]]


def _pylate_formula(q, d, q_mask=None, d_mask=None):
    """PyLate's torch path: the similarities times the masks, then max and sum."""
    s = torch.einsum("ash,bth->abst", q, d)
    if q_mask is not None:
        s = s * q_mask[:, None, :, None]
    if d_mask is not None:
        s = s * d_mask[None, :, None, :]
    return s.max(-1).values.sum(-1)


def test_random_batches_and_gradients_match_pylate_formula(isolated_lookup):
    q, d = randn(3, 6, 24, dtype=torch.float32), randn(5, 9, 24, dtype=torch.float32)
    q_mask = (torch.rand(3, 6, device=DEVICE) > 0.2).float()
    d_mask = (torch.rand(5, 9, device=DEVICE) > 0.4).float()
    d_mask[2] = 0  # a document that is all padding
    ours = [x.detach().clone().requires_grad_() for x in (q, d)]
    theirs = [x.detach().double().requires_grad_() for x in (q, d)]
    out = mf_pylate.colbert_scores(ours[0], ours[1], q_mask, d_mask.bool())  # boolean masks too
    ref = _pylate_formula(theirs[0], theirs[1], q_mask.double(), d_mask.double())
    assert torch.allclose(out.double(), ref, rtol=1e-5, atol=1e-5)
    g = torch.randn(out.shape, device=DEVICE)
    out.backward(g)
    ref.backward(g.double())
    for a, b in zip(ours, theirs):
        assert torch.allclose(a.grad.double(), b.grad, rtol=1e-4, atol=1e-5)
    # kd: each query against its own candidates
    dk = randn(3, 4, 7, 24, dtype=torch.float32)
    kd = mf_pylate.colbert_kd_scores(q, dk, q_mask)
    want = torch.stack([_pylate_formula(q[i:i + 1].double(), dk[i].double(), q_mask[i:i + 1].double())[0]
                        for i in range(3)])
    assert torch.allclose(kd.double(), want, rtol=1e-5, atol=1e-5)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"documents_mask has shape \(2, 2\); expected \(5, 9\)"):
        mf_pylate.colbert_scores(randn(3, 6, 24), randn(5, 9, 24), None, torch.ones(2, 2))
    with pytest.raises(TypeError, match="queries_embeddings has dtype torch.int64"):
        mf_pylate.colbert_scores(torch.ones(3, 6, 24, dtype=torch.int64), randn(5, 9, 24))
    with pytest.raises(ValueError, match="3 queries but 2 documents"):
        mf_pylate.colbert_scores_pairwise(randn(3, 6, 24), randn(2, 9, 24))


def test_install_and_uninstall_patch_pylate(monkeypatch):
    pkg = types.ModuleType("pylate")
    scores = types.ModuleType("pylate.scores")
    colbert = types.ModuleType("pylate.scores.colbert")

    def original(*a, **k):
        return "pylate"

    for module in (scores, colbert):
        for name in ("colbert_scores", "colbert_scores_pairwise", "colbert_kd_scores"):
            setattr(module, name, original)
    monkeypatch.setitem(sys.modules, "pylate", pkg)
    monkeypatch.setitem(sys.modules, "pylate.scores", scores)
    monkeypatch.setitem(sys.modules, "pylate.scores.colbert", colbert)
    patched = mf_pylate.install()
    assert "pylate.scores.colbert_scores" in patched and "pylate.scores.colbert.colbert_kd_scores" in patched
    assert scores.colbert_scores is mf_pylate.colbert_scores
    restored = mf_pylate.uninstall()
    assert sorted(restored) == sorted(patched) and scores.colbert_scores is original


def test_install_without_pylate_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "pylate", None)
    with pytest.raises(RuntimeError, match="pylate is not importable"):
        mf_pylate.install()


def test_arrays_and_broadcast_masks_as_pylate_takes_them(isolated_lookup):
    import numpy as np

    q = np.random.default_rng(0).standard_normal((2, 3, 8))  # float64 arrays: float32, as PyLate's
    d = [np.random.default_rng(1).standard_normal((4, 8)) for _ in range(3)]
    out = mf_pylate.colbert_scores(q, d, None, torch.tensor([[1.0, 1.0, 0.0, 1.0]]))  # [1, t] broadcasts
    assert out.dtype == torch.float32 and out.shape == (2, 3)
    dm = np.stack(d)
    dm[:, 2] = 0
    want = _pylate_formula(torch.as_tensor(q).float().double(), torch.as_tensor(dm).float().double())
    assert torch.allclose(out.double().cpu(), want, rtol=1e-5, atol=1e-5)
