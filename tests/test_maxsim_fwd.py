"""Every generated kernel against the float64 reference.

Runs compiled on a CUDA GPU when one is present, else through Triton's interpreter
on CPU tensors (marker ``gpu`` selects this suite on a GPU machine).
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch

from maxsim_forge.codegen import Q_MODES, ConfigError, KernelConfig, next_pow2, validate
from maxsim_forge.reference import reference_for
from maxsim_forge.runtime import default_config, launch_prepared

from cases import DIMS, KNOB_COMBOS, KNOBS, MASKS, TILES, make_case, sweep_variants, takes
from conftest import DEVICE, TOLERANCES, assert_exact, assert_scores, poisoned, randn

pytestmark = pytest.mark.gpu

LAYOUTS = ("padded", "allpairs", "packed", "pairs")
# Corners of the space: together they put every knob at each of its extremes.
CORNERS = [
    KernelConfig(block_q=16, block_d=16, block_k=16, num_warps=1, num_stages=1, q_mode="loop", split_d=1),
    KernelConfig(block_q=128, block_d=16, block_k=128, num_warps=8, num_stages=4, q_mode="grid", split_d=1),
    KernelConfig(block_q=16, block_d=128, block_k=128, num_warps=8, num_stages=2, q_mode="loop", split_d=16),
    KernelConfig(block_q=128, block_d=128, block_k=16, num_warps=8, num_stages=1, q_mode="fold", split_d=1),
    KernelConfig(block_q=16, block_d=16, block_k=128, num_warps=1, num_stages=4, q_mode="grid", split_d=16),
    KernelConfig(block_q=128, block_d=16, block_k=16, num_warps=4, num_stages=1, q_mode="fold", split_d=16),
    KernelConfig(block_q=32, block_d=64, block_k=64, num_warps=4, num_stages=2, q_mode="loop", split_d=2),
    KernelConfig(block_q=32, block_d=256, block_k=128, num_warps=8, num_stages=3, q_mode="loop", split_d=1),
    # lq 33: several tiles (atomic sum into a zeroed output), one tile (plain store), one
    # tile with the doc split.
    KernelConfig(block_q=16, block_d=32, block_k=64, num_warps=2, num_stages=2, q_mode="tile", split_d=1),
    KernelConfig(block_q=64, block_d=64, block_k=128, num_warps=4, num_stages=3, q_mode="tile", split_d=1),
    KernelConfig(block_q=64, block_d=16, block_k=32, num_warps=4, num_stages=2, q_mode="tile", split_d=4),
    # the persistent grid (padded docs, several queries): one chunk, then the dim split
    KernelConfig(block_q=128, block_d=16, block_k=128, num_warps=8, num_stages=4, q_mode="persist"),
    KernelConfig(block_q=16, block_d=64, block_k=16, num_warps=1, num_stages=1, q_mode="persist"),
]


def _runs(layout: str, cfg: KernelConfig) -> bool:
    if cfg.q_mode == "persist":
        return layout == "allpairs"
    return not (cfg.q_mode == "fold" and layout in ("padded", "pairs"))


def _check(prep, ref, cfg, tol, what):
    try:
        validate(prep.spec, cfg)
    except ConfigError:
        pytest.skip(f"{cfg.key()} is over the device limits for {prep.spec.key()}")
    shape = tuple(ref.shape) if not prep.squeeze else (1, *ref.shape)
    out = launch_prepared(prep, cfg, out=poisoned(shape))
    scale = reference_for(prep, absolute=True)
    assert_scores(out, ref, tol, f"{what} {prep.spec.key()} {cfg.key()}", scale=scale)
    return out


@pytest.mark.parametrize("dtype, precision, tol", TOLERANCES)
@pytest.mark.parametrize(
    "layout, cfg",
    [(layout, cfg) for layout, cfg in itertools.product(LAYOUTS, CORNERS) if _runs(layout, cfg)],
    ids=lambda v: v if isinstance(v, str) else v.key(),
)
def test_corners(layout, cfg, dtype, precision, tol):
    kinds = {"padded": ("lengths", "mask"), "allpairs": ("mask", "lengths")}.get(layout, ("lengths", "none"))
    prep, ref = make_case(
        layout, dtype, nq=3, lq=33, nb=4, ld=57, dim=96,
        q_kind=kinds[0] if layout != "pairs" else "none",
        d_kind=kinds[1] if layout in ("padded", "allpairs") else "none",
        precision=precision,
    )
    _check(prep, ref, cfg, tol, "corner")


SHAPES = list(itertools.product((1, 33), (1, 7, 257), (48, 96, 128, 320)))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("lq, ld, dim", SHAPES, ids=[f"lq{a}-ld{b}-dim{c}" for a, b, c in SHAPES])
def test_odd_shapes(layout, lq, ld, dim):
    # Rotate the dtype over the shapes so each dtype meets every size class.
    dtype, precision, tol = TOLERANCES[(SHAPES.index((lq, ld, dim)) + LAYOUTS.index(layout)) % 4]
    prep, ref = make_case(
        layout, dtype, nq=2, lq=lq, nb=3, ld=ld, dim=dim,
        d_kind="lengths" if layout in ("padded", "allpairs") else "none", precision=precision,
    )
    heuristic = default_config(prep.spec, **prep.sizes)
    _check(prep, ref, heuristic, tol, "heuristic")
    other = KernelConfig(block_q=16, block_d=32, block_k=min(64, heuristic.block_k),
                         q_mode="grid", split_d=2)
    _check(prep, ref, other, tol, "grid+split")


EXACT = [
    KernelConfig(block_q=16, block_d=16, block_k=0, num_warps=2, num_stages=1, q_mode="loop", split_d=1, exact_k=True),
    KernelConfig(block_q=32, block_d=32, block_k=0, num_warps=4, num_stages=3, q_mode="grid", split_d=2, exact_k=True),
    KernelConfig(block_q=64, block_d=16, block_k=0, num_warps=4, num_stages=2, q_mode="fold", split_d=1, exact_k=True),
]


SWEEP, SWEEP_SKIPPED = sweep_variants()


@pytest.mark.parametrize("v", SWEEP, ids=str)
def test_sweep(v):
    # One variant of the sweep over every layout, query mode and knob: rendered, run into
    # a poisoned output and held to the float64 reference.
    prep, ref = v.case()
    assert prep.spec == v.spec(), f"the case made {prep.spec.key()}, the sweep planned {v.spec().key()}"
    validate(prep.spec, v.cfg)  # the sweep keeps only variants that validate: no silent skip
    shape = tuple(ref.shape) if not prep.squeeze else (1, *ref.shape)
    out = launch_prepared(prep, v.cfg, out=poisoned(shape))
    assert_scores(out, ref, v.tol, f"sweep {v}", scale=reference_for(prep, absolute=True))


def _uncovered(pairs: set, seen: set, impossible: set = frozenset()) -> list:
    return sorted(pairs - seen - impossible, key=str)


def test_sweep_covers_every_mode_and_knob():
    runs = [(layout, mode) for layout in LAYOUTS for mode in Q_MODES if takes(layout, mode)]
    assert {mode for _, mode in runs} == set(Q_MODES), runs
    assert [mode for layout, mode in runs if layout != "allpairs"].count("persist") == 0, runs
    assert {layout for layout, mode in runs if mode == "fold"} == {"allpairs", "packed"}, runs
    # Every layout x mode x knob on, and a minimum of valid variants per mode (no knob,
    # each knob alone and one combination, for every layout that takes the mode).
    on = {(v.layout, v.cfg.q_mode, k) for v in SWEEP for k in ("none", *v.knobs)}
    missing = _uncovered({(layout, m, k) for layout, m in runs for k in ("none", *KNOBS)}, on)
    assert not missing, f"(layout, q_mode, knob) never run: {missing}; rejected by validate: {SWEEP_SKIPPED}"
    for mode in Q_MODES:
        count = sum(v.cfg.q_mode == mode for v in SWEEP)
        least = (len(KNOBS) + 2) * sum(m == mode for _, m in runs)
        assert count >= least, f"{mode}: {count} valid variants, fewer than {least}; rejected: {SWEEP_SKIPPED}"
    assert {v.knobs for v in SWEEP if len(v.knobs) > 1} == set(KNOB_COMBOS), "a combination of knobs never runs"
    # Every value of each other factor meets every mode and every knob.
    factors = {
        "split": lambda v: "1" if v.cfg.split_d == 1 else ">1",
        "tile": lambda v: v.tile,
        "dim": lambda v: v.dim,
        "dtype": lambda v: (v.dtype, v.precision),
        "lq": lambda v: v.sizes[1],
        "ld": lambda v: v.sizes[3],
    }
    values = {"split": ("1", ">1"), "tile": [t.name for t in TILES], "dim": DIMS,
              "dtype": [(d, p) for d, p, _ in TOLERANCES], "lq": (1, 7, 33), "ld": (1, 7, 33, 61, 70)}
    # persist walks whole docs (no split); exact_k takes a multiple of 16 (not dim 100)
    impossible = {("persist", "split", ">1"), ("exact_k", "dim", 100)}
    for name, value_of in factors.items():
        seen = {(m, name, value_of(v)) for v in SWEEP for m in (v.cfg.q_mode, *v.knobs)}
        want = {(m, name, x) for m in (*Q_MODES, *KNOBS) for x in values[name]}
        missing = _uncovered(want, seen, impossible)
        assert not missing, f"(mode or knob, {name}, value) never run: {missing}"
    # Every mask kind on each side of every layout that takes it.
    kinds = {(v.layout, v.q_kind, v.d_kind) for v in SWEEP}
    missing = _uncovered({(layout, q, d) for layout in LAYOUTS for q, d in MASKS[layout]}, kinds)
    assert not missing, f"(layout, q_kind, d_kind) never run: {missing}"


@pytest.mark.parametrize("dtype, precision, tol", TOLERANCES)
@pytest.mark.parametrize("dim", (48, 96, 112))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_exact_feature_tiles(layout, dim, dtype, precision, tol):
    # 48 = 32 + 16, 96 = 64 + 32, 112 = 64 + 32 + 16: each part its own dot, no padding.
    kinds = {"padded": ("mask", "lengths"), "allpairs": ("lengths", "mask")}.get(layout, ("none", "none"))
    prep, ref = make_case(layout, dtype, nq=3, lq=33, nb=4, ld=41, dim=dim, q_kind=kinds[0],
                          d_kind=kinds[1], precision=precision)
    for cfg in EXACT:
        if _runs(layout, cfg):
            _check(prep, ref, replace(cfg, block_k=next_pow2(dim)), tol, "exact_k")


OVERLAP = [
    KernelConfig(block_q=32, block_d=16, block_k=64, num_warps=4, num_stages=2, q_mode="loop", overlap_max=True),
    KernelConfig(block_q=64, block_d=16, block_k=32, num_warps=4, num_stages=3, q_mode="grid", split_d=2,
                 overlap_max=True),
    KernelConfig(block_q=256, block_d=16, block_k=64, num_warps=8, num_stages=1, q_mode="fold", overlap_max=True),
    KernelConfig(block_q=32, block_d=16, block_k=128, num_warps=4, num_stages=2, exact_k=True, overlap_max=True),
]


MASKED_LOOP = [
    KernelConfig(block_q=64, block_d=16, block_k=128, num_warps=4, num_stages=3, q_mode="tile", masked_loop=True),
    KernelConfig(block_q=16, block_d=32, block_k=64, num_warps=2, num_stages=2, q_mode="loop", masked_loop=True),
    KernelConfig(block_q=16, block_d=16, block_k=32, num_warps=4, num_stages=2, q_mode="grid", split_d=2,
                 masked_loop=True),
    KernelConfig(block_q=64, block_d=16, block_k=128, num_warps=4, num_stages=1, q_mode="fold", exact_k=True,
                 masked_loop=True),
    KernelConfig(block_q=32, block_d=16, block_k=128, num_warps=4, num_stages=2, q_mode="tile", exact_k=True,
                 overlap_max=True, masked_loop=True),
]

DEFER_MAX = [
    KernelConfig(block_q=64, block_d=16, block_k=128, num_warps=4, num_stages=3, q_mode="grid", defer_max=True),
    KernelConfig(block_q=256, block_d=16, block_k=64, num_warps=8, num_stages=2, q_mode="fold", defer_max=True),
    KernelConfig(block_q=64, block_d=16, block_k=32, num_warps=4, num_stages=2, q_mode="loop", split_d=2,
                 masked_loop=True, defer_max=True),
    KernelConfig(block_q=64, block_d=16, block_k=128, num_warps=4, num_stages=1, q_mode="tile", exact_k=True,
                 defer_max=True),
]

# Per doc-loop knob: its configs and the (query, doc) mask kinds of the padded and
# allpairs layouts (the others take extents from offsets).
DOC_LOOP_KNOBS = {
    "overlap_max": (OVERLAP, ("lengths", "mask"), ("mask", "lengths")),
    "masked_loop": (MASKED_LOOP, ("mask", "lengths"), ("lengths", "mask")),
    "defer_max": (DEFER_MAX, ("lengths", "mask"), ("mask", "lengths")),
}


@pytest.mark.parametrize("knob", sorted(DOC_LOOP_KNOBS))
@pytest.mark.parametrize("dtype, precision, tol", TOLERANCES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_doc_loop_knobs(layout, dtype, precision, tol, knob):
    # Docs of 0 to 3 full tiles and a partial one: the first and last tiles of the
    # overlapped loop and the tail after it, or every tile in the one masked loop; with
    # a doc split, chunks that end in a partial tile and chunks that are empty.
    configs, padded_kinds, allpairs_kinds = DOC_LOOP_KNOBS[knob]
    kinds = {"padded": padded_kinds, "allpairs": allpairs_kinds}.get(layout, ("none", "none"))
    prep, ref = make_case(layout, dtype, nq=3, lq=40, nb=5, ld=61, dim=96, q_kind=kinds[0], d_kind=kinds[1],
                          precision=precision)
    for cfg in configs:
        if _runs(layout, cfg):
            _check(prep, ref, cfg, tol, knob)


PERSIST = [
    KernelConfig(block_q=64, block_d=16, block_k=128, num_warps=4, num_stages=2, q_mode="persist"),
    KernelConfig(block_q=256, block_d=16, block_k=64, num_warps=8, num_stages=1, q_mode="persist", defer_max=True),
    KernelConfig(block_q=32, block_d=16, block_k=128, num_warps=2, num_stages=3, q_mode="persist", exact_k=True),
]


@pytest.mark.parametrize("kinds", (("lengths", "mask"), ("mask", "lengths"), ("none", "none")))
@pytest.mark.parametrize("dtype, precision, tol", TOLERANCES)
def test_persistent_grid(dtype, precision, tol, kinds):
    # Each program keeps a query tile and walks docs lane, lane + lanes, ...: more docs
    # than lanes (several per program, unevenly), docs of 0 to 3 full tiles and a partial
    # one, query tiles that cross query boundaries; the grid is query tiles x lanes.
    from maxsim_forge.codegen._plan import PERSIST_PER_SM, plan, sm_count

    prep, ref = make_case("allpairs", dtype, nq=3, lq=40, nb=11, ld=61, dim=96, q_kind=kinds[0], d_kind=kinds[1],
                          precision=precision)
    kw = prep.launch_kwargs
    for cfg in PERSIST:
        _check(prep, ref, cfg, tol, "persist")
        _, steps = plan(prep.spec, cfg, prep.q, prep.d, **kw)
        q_tiles = -(-kw["nq"] * kw["lq"] // cfg.block_q)
        lanes = max(1, min(kw["nb"], sm_count(prep.q.device) * PERSIST_PER_SM // q_tiles))
        assert [step.grid for step in steps] == [(q_tiles * lanes,)], cfg.key()


@pytest.mark.parametrize("q_kind", ("none", "lengths", "mask"))
@pytest.mark.parametrize("d_kind", ("none", "lengths", "mask"))
@pytest.mark.parametrize("layout", ("padded", "allpairs"))
def test_masks(layout, q_kind, d_kind):
    prep, ref = make_case(layout, "fp16", nq=3, lq=20, nb=5, ld=40, dim=48, q_kind=q_kind, d_kind=d_kind)
    for cfg in (
        KernelConfig(block_q=16, block_d=16, block_k=64, q_mode="loop"),
        KernelConfig(block_q=32, block_d=16, block_k=16, q_mode="fold" if layout == "allpairs" else "grid", split_d=4),
    ):
        _check(prep, ref, cfg, 1e-5, "masks")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_docs_without_valid_tokens_score_exactly_zero(layout, device):
    cfg = KernelConfig(block_q=16, block_d=16, block_k=32, q_mode="loop", split_d=2)
    dim = 32
    q = randn(2, 5, dim, device=device)
    if layout == "pairs":
        from maxsim_forge._inputs import pack_pairs

        prep = pack_pairs([q[0], q[1]], [q.new_empty(0, dim), q.new_empty(0, dim)])
        out = launch_prepared(prep, cfg, out=poisoned((2,)))
    elif layout == "packed":
        from maxsim_forge._inputs import prepare_packed

        cu = torch.tensor([0, 0, 0, 0], device=device)
        prep = prepare_packed(q, randn(4, dim, device=device), cu)
        out = launch_prepared(prep, cfg, out=poisoned((2, 3)))
    else:
        from maxsim_forge._inputs import prepare_padded

        d = randn(3, 9, dim, device=device)
        q_in = q[:1] if layout == "padded" else q
        masks = {"d_mask": torch.zeros(3, 9, dtype=torch.bool, device=device)}
        prep = prepare_padded(q_in, d, **masks)
        out = launch_prepared(prep, cfg, out=poisoned((q_in.shape[0], 3)))
    assert_exact(out, torch.zeros_like(out), f"{layout}: docs without valid tokens")


@pytest.mark.parametrize(
    "nq, lq, nb, ld",
    [(2, 5, 0, 9), (2, 5, 3, 0), (2, 0, 3, 9), (0, 5, 3, 9)],
    ids=["no-docs", "ld0", "lq0", "nq0"],
)
def test_empty_extents(nq, lq, nb, ld, device):
    from maxsim_forge._inputs import prepare_padded
    from maxsim_forge.reference import maxsim_reference

    q = randn(nq, lq, 32, device=device)
    d = randn(nb, ld, 32, device=device)
    prep = prepare_padded(q, d)
    for cfg in (KernelConfig(block_q=16, block_d=16, block_k=32), KernelConfig(block_q=16, block_d=16, block_k=32, q_mode="fold", split_d=2)):
        if cfg.q_mode == "fold" and prep.spec.layout == "padded":
            continue
        out = launch_prepared(prep, cfg, out=poisoned((nq, nb)))
        assert_scores(out, maxsim_reference(q, d), 1e-5, "empty")


@pytest.mark.parametrize("q_mode", ("loop", "grid", "fold"))
def test_many_queries(q_mode):
    prep, ref = make_case("allpairs", "bf16", nq=16, lq=8, nb=3, ld=20, dim=64)
    _check(prep, ref, KernelConfig(block_q=32, block_d=16, block_k=64, q_mode=q_mode), 1e-5, "nq16")


@pytest.mark.parametrize("block_q", (32, 128))
@pytest.mark.parametrize("q_kind", ("none", "lengths", "mask"))
@pytest.mark.parametrize("layout", ("allpairs", "packed"))
def test_folded_rows_in_one_tile_or_several(layout, q_kind, block_q):
    # 5 queries x 20 rows: one tile of 128 stores each query's sum (no zeroed output, no
    # atomics); tiles of 32 add rows into a zeroed output. Both into a poisoned output
    # and into one the variant allocates.
    prep, ref = make_case(layout, "fp16", nq=5, lq=20, nb=7, ld=37, dim=64, q_kind=q_kind,
                          d_kind="lengths" if layout == "allpairs" else "none")
    cfg = KernelConfig(block_q=block_q, block_d=16, block_k=64, num_warps=4, num_stages=2, q_mode="fold")
    _check(prep, ref, cfg, 1e-5, "fold")
    out = launch_prepared(prep, cfg)
    assert_scores(out, ref, 1e-5, f"fold, allocated {cfg.key()}", scale=reference_for(prep, absolute=True))


@pytest.mark.parametrize(("nq", "lq", "block_q"), ((37, 3, 128), (70, 1, 128), (33, 1, 64), (5, 3, 16)))
@pytest.mark.parametrize("layout", ("allpairs", "packed"))
def test_many_short_queries_in_one_tile(layout, nq, lq, block_q):
    # The one-tile store takes its queries 32 at a time (16 for a 16-row tile): 37 and 70
    # queries need two and three steps, the last one partial. Masked rows among them.
    prep, ref = make_case(layout, "fp16", nq=nq, lq=lq, nb=5, ld=29, dim=32, q_kind="mask",
                          d_kind="lengths" if layout == "allpairs" else "none")
    cfg = KernelConfig(block_q=block_q, block_d=16, block_k=32, num_warps=4, num_stages=2, q_mode="fold")
    _check(prep, ref, cfg, 1e-5, f"{nq} queries of {lq} in one tile")


def test_fp32_precisions_differ_only_within_tf32_tolerance(device):
    prep, ref = make_case("padded", "fp32", nq=1, lq=16, nb=4, ld=33, dim=128, precision="tf32")
    _check(prep, ref, KernelConfig(block_q=16, block_d=32, block_k=64), 3e-3, "tf32")


@pytest.mark.parametrize("q_mode", ("grid", "tile"))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_repeat_launches_of_one_variant_stay_correct(layout, q_mode):
    # After the first launch a variant is launched directly (codegen/_launcher.py): each
    # later call must still specialise right on sizes, pointer alignment and the index
    # dtype of its extents.
    from maxsim_forge.codegen import load_variant

    cfg = KernelConfig(block_q=32, block_d=32, block_k=64, num_warps=4, num_stages=2,
                       q_mode=q_mode, split_d=2 if q_mode == "grid" else 1)
    calls = [(2, 33, 4, 57), (3, 1, 1, 1), (2, 33, 5, 300), (1, 7, 9, 16), (2, 33, 4, 57)]
    variant, first = None, None
    for i, (nq, lq, nb, ld) in enumerate(calls):
        prep, ref = make_case(layout, "fp16", nq=nq, lq=lq, nb=nb, ld=ld, dim=64,
                              d_kind="lengths" if layout in ("padded", "allpairs") else "none")
        k = prep.launch_kwargs
        if i == 2 and k.get("d_lengths") is not None:
            k["d_lengths"] = k["d_lengths"].to(torch.int64)  # another index dtype
        if i == 3:  # a view that starts 2 bytes into its storage: another alignment
            buf = torch.empty(prep.d.numel() + 1, dtype=prep.d.dtype, device=prep.d.device)
            prep.d = buf[1:].view(prep.d.shape).copy_(prep.d)
        _check(prep, ref, cfg, 1e-5, f"call {i}")
        variant = load_variant(prep.spec, cfg)
        first = first or (prep, ref)
    _check(*first, cfg, 1e-5, "the first call again")  # the same key: a direct launch
    if torch.cuda.is_available() and DEVICE == "cuda":
        assert variant.fwd.direct_launches > 0, "no launch went direct"
