"""The search space (tuner/_space.py): every restriction with its reason, the walk that
prunes knob by knob, and what the restrictions on deferred maxima, the persistent grid
and the masked loop allow."""

from __future__ import annotations

from dataclasses import replace

import pytest

from maxsim_forge.codegen import KernelConfig, KernelSpec
from maxsim_forge.runtime import default_config
from maxsim_forge.tuner import RESTRICTIONS, check_static


def test_every_restriction_has_a_reason():
    assert len({r.name for r in RESTRICTIONS}) == len(RESTRICTIONS)
    assert all(r.reason and len(r.reason) > 20 for r in RESTRICTIONS)


@pytest.mark.parametrize("spec, sizes", [
    (KernelSpec("allpairs", "fp16", 128), dict(nq=16, lq=32, nb=1000, ld=300)),
    (KernelSpec("pairs", "bf16", 96), dict(nq=1, lq=32, nb=64, ld=300)),
    (KernelSpec("packed", "fp32", 320, "ieee"), dict(nq=3, lq=40, nb=5, ld=61)),
], ids=("allpairs", "pairs", "packed-fp32"))
def test_enumeration_matches_every_config_checked_one_by_one(spec, sizes, monkeypatch):
    # The space is walked knob by knob, each rule checked once its knobs are chosen: the
    # same configs, in the same order, as checking every config of the product.
    from maxsim_forge._problems import Sizes
    from maxsim_forge.tuner import _space
    from maxsim_forge.tuner._space import all_configs, valid_configs

    s = Sizes(**sizes)
    brute = [c for c in all_configs() if check_static(spec, c, s, sm_count=132, smem_limit=232_448) is None]
    assert valid_configs(spec, s, sm_count=132, smem_limit=232_448) == brute
    # A rule that reads a knob it does not declare fails loudly, never prunes by accident.
    wrong = replace(_space.RESTRICTIONS[0], knobs=("block_k",), allows=lambda spec, cfg, s, sms: cfg.num_warps > 0)
    monkeypatch.setattr(_space, "RESTRICTIONS", (wrong, *_space.RESTRICTIONS[1:]))
    with pytest.raises(AttributeError, match="num_warps"):
        valid_configs(spec, s, sm_count=132)


def test_deferred_row_max_only_for_tall_tiles_over_several_doc_tiles():
    from maxsim_forge._problems import Sizes

    spec, sizes = KernelSpec("padded", "fp16", 128), dict(sm_count=132, smem_limit=232_448)
    cfg = KernelConfig(block_q=128, block_d=64, block_k=128, num_warps=8, num_stages=3, q_mode="grid", defer_max=True)
    assert check_static(spec, cfg, Sizes(nq=1, lq=1024, nb=1000, ld=1024), **sizes) is None
    assert "defer_needs_doc_tiles" in check_static(spec, cfg, Sizes(nq=1, lq=1024, nb=1000, ld=64), **sizes)
    assert "defer_needs_doc_tiles" in check_static(spec, replace(cfg, block_q=32), Sizes(nq=1, lq=32, nb=1000, ld=1024),
                                                   **sizes)
    assert "defer_or_overlap" in check_static(spec, replace(cfg, overlap_max=True),
                                              Sizes(nq=1, lq=1024, nb=1000, ld=1024), **sizes)
    # The running max is a second score tile in the register estimate.
    big = KernelConfig(block_q=256, block_d=64, block_k=128, num_warps=8, num_stages=3, q_mode="grid")
    assert check_static(spec, big, Sizes(nq=1, lq=1024, nb=1000, ld=1024), **sizes) is None
    assert "registers" in check_static(spec, replace(big, defer_max=True), Sizes(nq=1, lq=1024, nb=1000, ld=1024),
                                       **sizes)


def test_persistent_grid_only_for_folded_queries_over_padded_docs():
    from maxsim_forge._problems import Sizes

    sizes = dict(sm_count=132, smem_limit=232_448)
    cfg = KernelConfig(block_q=256, block_d=64, block_k=128, num_warps=8, num_stages=3, q_mode="persist")
    many = Sizes(nq=16, lq=32, nb=1000, ld=300)
    assert check_static(KernelSpec("allpairs", "fp16", 128), cfg, many, **sizes) is None
    # 256 rows need the folded row set: 16 queries of 32 tokens, not one.
    assert "block_q_fits_rows" in check_static(KernelSpec("allpairs", "fp16", 128), cfg,
                                               Sizes(nq=1, lq=32, nb=1000, ld=300), **sizes)
    for other in (replace(cfg, masked_loop=True), replace(cfg, overlap_max=True)):
        assert "persist_for_folded_queries" in check_static(KernelSpec("allpairs", "fp16", 128), other, many, **sizes)
    assert "persist_for_folded_queries" in check_static(KernelSpec("packed", "fp16", 128), cfg, many, **sizes)


def test_one_masked_loop_only_where_a_doc_can_end_mid_tile():
    from maxsim_forge._problems import Sizes

    cfg = KernelConfig(block_q=32, block_d=64, block_k=128, q_mode="tile", masked_loop=True)
    sizes = dict(sm_count=132, smem_limit=232_448)
    assert "masked_loop_needs_a_partial_tile" in check_static(KernelSpec("padded", "fp16", 128), cfg,
                                                              Sizes(nq=1, lq=32, nb=1000, ld=256), **sizes)
    for spec, ld in ((KernelSpec("padded", "fp16", 128), 300), (KernelSpec("padded", "fp16", 128, d_mask="lengths"), 256),
                     (KernelSpec("packed", "fp16", 128), 256)):
        assert check_static(spec, cfg, Sizes(nq=1, lq=32, nb=1000, ld=ld), **sizes) is None, (spec, ld)
    # The heuristic's straight-line tiles take the masked loop exactly where docs can end mid-tile.
    for spec, ld, masked in ((KernelSpec("padded", "fp16", 128), 300, True), (KernelSpec("padded", "fp16", 128), 256, False),
                             (KernelSpec("padded", "fp16", 128, d_mask="lengths"), 256, True),
                             (KernelSpec("pairs", "bf16", 96), 128, True)):
        pick = default_config(spec, nq=1, lq=32, nb=1000, ld=ld)
        assert (pick.q_mode, pick.masked_loop) == ("tile", masked), (spec, ld, pick)
    assert not default_config(KernelSpec("padded", "fp16", 128), nq=1, lq=1024, nb=1000, ld=300).masked_loop


def test_candidates_hash_does_not_follow_the_display_name_of_configs(monkeypatch):
    # Stored winners carry this hash: a new spelling of variant names must leave it.
    from maxsim_forge.codegen import KernelConfig, KernelSpec
    from maxsim_forge._keys import Sizes
    from maxsim_forge.tuner._space import _hash_key, candidates_hash

    spec, sizes = KernelSpec("padded", "fp16", 128, d_mask="lengths"), Sizes(nq=1, lq=32, nb=1000, ld=300)
    before = candidates_hash.__wrapped__(spec, sizes, sm_count=132, smem_limit=232_448)
    monkeypatch.setattr(KernelConfig, "key", lambda self: "renamed")
    assert candidates_hash.__wrapped__(spec, sizes, sm_count=132, smem_limit=232_448) == before
    assert _hash_key(KernelConfig(block_k=128, exact_k=True, masked_loop=True)) == "q32-d64-k128-w4-s3-loop-x1-exact-mloop"
