"""Launch plans (codegen/_plan.py): the output, its zeroing, grids and arguments."""

from __future__ import annotations

import pytest
import torch

from maxsim_forge.codegen import KernelConfig, KernelSpec, query_programs, zeroed_output
from maxsim_forge.codegen._plan import PERSIST_PER_SM, check_call, persist_lanes, plan, sm_count


def _padded(nq, lq, nb, ld, dim=32):
    return torch.randn(nq, lq, dim), torch.randn(nb, ld, dim)


@pytest.mark.parametrize("mode, nq, lq, block_q, zero", [
    ("loop", 3, 70, 16, False),      # one program per query stores its sum
    ("grid", 1, 8, 16, True),        # tiles over programs always add with atomics
    ("persist", 4, 8, 16, True),
    ("tile", 1, 16, 16, False),      # one tile: a plain store
    ("tile", 1, 17, 16, True),       # two tiles add
    ("fold", 4, 8, 32, False),       # 32 folded rows in one tile: each query's sum stored
    ("fold", 4, 9, 32, True),        # 36 rows: two tiles add
])
def test_output_is_zeroed_exactly_where_programs_add(mode, nq, lq, block_q, zero):
    cfg = KernelConfig(block_q=block_q, block_k=32, q_mode=mode)
    assert zeroed_output(cfg, nq, lq) is zero
    # A doc split's reduce kernel writes every score: never zeroed.
    if mode != "persist":
        assert zeroed_output(KernelConfig(block_q=block_q, block_k=32, q_mode=mode, split_d=2), nq, lq) is False
    spec = KernelSpec("allpairs", "fp32", 32)
    q, d = _padded(nq, lq, 5, 20)
    given = torch.full((nq, 5), float("nan"))
    out, steps = plan(spec, cfg, q, d, nq=nq, lq=lq, nb=5, ld=20, out=given)
    assert out is given and bool((out == 0).all()) is zero and bool(out.isnan().all()) is not zero


def test_grid_counts_query_programs_splits_and_docs():
    spec = KernelSpec("allpairs", "fp32", 32, d_mask="lengths")
    cfg = KernelConfig(block_q=16, block_d=16, block_k=32, q_mode="grid", split_d=4)
    q, d = _padded(3, 40, 7, 50)
    lengths = torch.full((7,), 50)
    out, steps = plan(spec, cfg, q, d, nq=3, lq=40, nb=7, ld=50, d_lengths=lengths)
    fwd, reduce = steps
    assert fwd.kernel == "fwd" and fwd.grid == (query_programs("allpairs", cfg, 3, 40) * 4 * 7,) == (3 * 3 * 4 * 7,)
    assert reduce.kernel == "reduce" and reduce.grid == (3 * 7,)
    part = fwd.args[3]
    assert part.shape == (4, 3 * 40, 7) and reduce.args[0] is part and reduce.args[1] is out
    # The unused extents point at d; the given lengths go where the kernel reads them.
    assert fwd.args[4] is d and fwd.args[8] is lengths


def test_persistent_grid_spreads_each_query_tile_over_lanes():
    spec = KernelSpec("allpairs", "fp16", 32)
    cfg = KernelConfig(block_q=32, block_d=16, block_k=32, q_mode="persist")
    q, d = (t.half() for t in _padded(4, 16, 100, 16))
    out, (fwd,) = plan(spec, cfg, q, d, nq=4, lq=16, nb=100, ld=16)
    q_progs = 2
    lanes = persist_lanes(100, q_progs, q.device)
    assert lanes == min(100, sm_count(q.device) * PERSIST_PER_SM // q_progs)
    assert fwd.grid == (q_progs * lanes,) and fwd.args[10:16] == (4, 16, 16, q_progs, 100, lanes)
    assert persist_lanes(3, q_progs, q.device) == 3 and persist_lanes(100, 10**6, q.device) == 1


def test_pairs_and_packed_take_token_strides():
    cfg = KernelConfig(block_q=16, block_d=16, block_k=32, split_d=2)
    q, d = torch.randn(9, 32), torch.randn(11, 32)
    q_cu, d_cu = torch.tensor([0, 4, 9], dtype=torch.int32), torch.tensor([0, 6, 11], dtype=torch.int32)
    out, (fwd, reduce) = plan(KernelSpec("pairs", "fp32", 32), cfg, q, d, nq=1, lq=5, nb=2, ld=6,
                              q_cu=q_cu, d_cu=d_cu)
    assert out.shape == (2,) and fwd.args[4] is q_cu and fwd.args[5] is d_cu
    strides = fwd.args[14:20]
    assert strides == (0, 32, 1, 0, 32, 1)
    assert fwd.args[3].shape == (2, 9, 1) and reduce.args[2] is q_cu


def test_empty_calls_launch_nothing_and_score_zero():
    spec, cfg = KernelSpec("allpairs", "fp32", 32), KernelConfig(block_k=32, q_mode="grid")
    q, d = _padded(2, 4, 3, 5)
    for nq, lq, nb in ((2, 0, 3), (2, 4, 0)):
        out, steps = plan(spec, cfg, q, d, nq=nq, lq=lq, nb=nb, ld=5)
        assert steps == () and out.shape == (nq, nb) and bool((out == 0).all())


def test_bad_calls_are_refused_by_name():
    spec, cfg = KernelSpec("allpairs", "fp16", 32), KernelConfig(block_k=32)
    q, d = _padded(2, 4, 3, 5)
    with pytest.raises(TypeError, match="takes torch.float16; got q torch.float32"):
        check_call(spec, "v", q, d)
    with pytest.raises(ValueError, match="takes dim 32; got q"):
        check_call(spec, "v", q.half()[..., :16], d.half())
    with pytest.raises(ValueError, match=r"out must be float32 of shape \(2, 3\)"):
        plan(spec, cfg, q.half(), d.half(), nq=2, lq=4, nb=3, ld=5, out=torch.empty(3, 2))
