"""Finding 5: one NaN and inf rule on every path (kernels, the torch fallback, the reference)."""

from __future__ import annotations


import pytest
import torch

from maxsim_forge._inputs import prepare_packed, prepare_padded
from maxsim_forge.codegen import KernelConfig, load_variant
from maxsim_forge.reference import reference_for
from maxsim_forge.runtime._eager import eager_scores




# ---- one NaN and inf rule on every path (kernels, torch fallback, reference)

# Configs that take every way of taking a max: per tile, overlapped, deferred, the
# persistent grid, folded rows in one tile and in several, a doc split's reduce kernel.
NAN_CONFIGS = [
    KernelConfig(block_q=16, block_d=16, block_k=32, q_mode="loop"),
    KernelConfig(block_q=16, block_d=16, block_k=32, q_mode="grid", overlap_max=True),
    KernelConfig(block_q=16, block_d=16, block_k=32, q_mode="tile", defer_max=True, masked_loop=True),
    KernelConfig(block_q=16, block_d=16, block_k=16, q_mode="loop", split_d=2),
    KernelConfig(block_q=64, block_d=16, block_k=32, q_mode="fold"),
    KernelConfig(block_q=16, block_d=16, block_k=32, q_mode="fold", split_d=2),
    KernelConfig(block_q=16, block_d=16, block_k=32, q_mode="persist", defer_max=True),
    KernelConfig(block_q=32, block_d=16, block_k=32, q_mode="persist"),
]
SEED = 1905


def _poisoned(kind: str, poison: float):
    """3 queries x 5 docs, dim 32, with query lengths and a doc mask: the poison goes into
    a valid token (``valid-doc``, ``valid-query``) or into masked and padded ones only."""
    gen = torch.Generator().manual_seed(SEED)
    q = torch.randn(3, 9, 32, generator=gen)
    d = torch.randn(5, 21, 32, generator=gen)
    q_lengths = torch.tensor([9, 5, 7])
    d_mask = torch.rand(5, 21, generator=gen) > 0.3
    d_mask[3] = False  # a doc with no valid token scores 0 whatever it holds
    clean = prepare_padded(q.clone(), d.clone(), q_lengths=q_lengths, d_mask=d_mask)
    if kind == "valid-doc":
        d[1, int(d_mask[1].nonzero()[0]), 4] = poison
    elif kind == "valid-query":
        q[2, 3, 7] = poison
    else:  # masked and padded tokens only
        q[1, 5:] = poison
        d[~d_mask] = poison
    return clean, prepare_padded(q, d, q_lengths=q_lengths, d_mask=d_mask, check_values=False)


def _expected(kind: str, clean) -> torch.Tensor:
    want = reference_for(clean).float()
    if kind == "valid-doc":
        want[:, 1] = float("nan")
    elif kind == "valid-query":
        want[2, [0, 1, 2, 4]] = float("nan")  # doc 3 has no valid token: 0 still
    return want


def _same(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    for name, test in (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
        at, want_at = test(got), test(want)
        assert torch.equal(at, want_at), (
            f"{what}: {name} at {at.nonzero().tolist()}, want {want_at.nonzero().tolist()} (seed {SEED})")
    finite = torch.isfinite(want)
    err = (got[finite] - want[finite]).abs().max().item() if finite.any() else 0.0
    assert err < 1e-3, f"{what}: max error {err} on the finite scores (seed {SEED})"


@pytest.mark.parametrize("kind, poison", [
    ("valid-doc", float("nan")), ("valid-query", float("nan")), ("masked-only", float("nan")),
    ("masked-only", float("inf")), ("masked-only", -float("inf")),
])
def test_nan_rule_holds_on_kernels_fallback_and_reference(kind, poison):
    clean, prep = _poisoned(kind, poison)
    want = _expected(kind, clean)
    _same(reference_for(prep).float(), want, f"reference, {kind}")
    _same(eager_scores(prep), want, f"torch fallback, {kind}")
    for cfg in NAN_CONFIGS:
        try:
            variant = load_variant(prep.spec, cfg)
        except ValueError:
            continue  # a mode this layout does not take
        got = variant.launch(prep.q, prep.d, **prep.launch_kwargs)
        _same(got, want, f"kernel {variant.name}, {kind}")


def test_an_inf_in_a_valid_token_follows_ieee_on_every_path():
    clean, prep = _poisoned("valid-doc", float("inf"))
    ref = reference_for(prep).float()
    assert not torch.isfinite(ref[:, 1]).all(), "the poison did not reach a score"
    _same(eager_scores(prep), ref, "torch fallback")
    for cfg in NAN_CONFIGS[:4]:
        variant = load_variant(prep.spec, cfg)
        _same(variant.launch(prep.q, prep.d, **prep.launch_kwargs), ref, f"kernel {variant.name}")


def test_nan_in_packed_padding_changes_nothing():
    gen = torch.Generator().manual_seed(SEED)
    q = torch.randn(2, 6, 32, generator=gen)
    d = torch.randn(30, 32, generator=gen)
    cu = torch.tensor([0, 7, 7, 19, 30], dtype=torch.int32)
    q_mask = torch.ones(2, 6, dtype=torch.bool)
    q_mask[0, 4:] = False
    clean = prepare_packed(q.clone(), d, cu, q_mask=q_mask)
    q[0, 4:] = float("nan")
    prep = prepare_packed(q, d, cu, q_mask=q_mask, check_values=False)
    want = reference_for(clean).float()
    _same(reference_for(prep).float(), want, "reference")
    _same(eager_scores(prep), want, "torch fallback")
    for cfg in (KernelConfig(block_q=16, block_d=16, block_k=32, q_mode="fold"),
                KernelConfig(block_q=16, block_d=16, block_k=32, q_mode="loop", split_d=2)):
        _same(load_variant(prep.spec, cfg).launch(prep.q, prep.d, **prep.launch_kwargs), want, cfg.key())


