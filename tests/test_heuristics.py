"""The heuristic default config: its table of regimes, the steps after it, and validity."""

from __future__ import annotations

import dataclasses
import itertools
import random

import pytest

from maxsim_forge.codegen import MASK_KINDS, Q_MODES, ConfigError, KernelConfig, KernelSpec, validate
from maxsim_forge.runtime import default_config
from maxsim_forge.runtime._heuristics import REGIMES, STEPS, Call, heuristic_regime, regime_for
from maxsim_forge.tuner import PRESETS, check_static

SEED = 18
LAYOUTS = ("padded", "allpairs", "packed", "pairs")
DTYPE_PRECISIONS = (("fp16", "tf32"), ("bf16", "tf32"), ("fp32", "tf32"), ("fp32", "ieee"))
DIMS = (16, 32, 48, 64, 96, 100, 128, 160, 256, 320, 384, 512, 768)
SIZES = dict(
    nq=(1, 2, 3, 4, 5, 8, 9, 16, 17, 32, 64, 128, 129),
    lq=(1, 7, 8, 16, 31, 32, 33, 64, 65, 100, 128, 129, 255, 256, 257, 300, 512, 1024),
    nb=(1, 2, 10, 50, 100, 264, 1000, 4000, 10000, 50000),
    ld=(0, 1, 7, 16, 31, 33, 64, 100, 180, 300, 1024, 2048),
    sm_count=(4, 78, 114, 132),
)
# Per-block shared-memory limits: Hopper's (and the default), A100's, Ada's.
SMEM_LIMITS = (None, 232_448, 166_912, 101_376)


def _specs() -> list[KernelSpec]:
    out = []
    for layout, (dtype, precision), dim, q_mask, d_mask in itertools.product(
            LAYOUTS, DTYPE_PRECISIONS, DIMS, MASK_KINDS, MASK_KINDS):
        spec = KernelSpec(layout, dtype, dim, precision=precision, q_mask=q_mask, d_mask=d_mask)
        try:
            spec.validate()
        except ConfigError:
            continue
        out.append(spec)
    return out


def _sample(n: int, seed: int = SEED, smem_limits=SMEM_LIMITS) -> list[tuple[KernelSpec, dict]]:
    """``n`` (spec, sizes) pairs drawn from the grid with a fixed seed."""
    rng, specs = random.Random(seed), _specs()
    return [(rng.choice(specs), {**{k: rng.choice(v) for k, v in SIZES.items()}, "smem_limit": rng.choice(smem_limits)})
            for _ in range(n)]


def _knobs(cfg: KernelConfig) -> tuple:
    return (cfg.q_mode, cfg.block_q, cfg.block_d, cfg.block_k, cfg.num_warps, cfg.num_stages, cfg.split_d,
            cfg.exact_k, cfg.masked_loop)


# (regime, spec, sizes, (q_mode, block_q, block_d, block_k, num_warps, num_stages, split_d, exact_k, masked_loop))
REGIME_CASES = [
    ("query-set-over-padded-docs", KernelSpec("allpairs", "bf16", 128), dict(nq=16, lq=32, nb=1000, ld=300),
     ("persist", 256, 64, 128, 8, 3, 1, False, False)),
    ("query-set-over-padded-docs", KernelSpec("allpairs", "fp16", 96), dict(nq=32, lq=32, nb=3, ld=300),
     ("persist", 256, 64, 128, 8, 3, 1, True, False)),
    ("large-query-set", KernelSpec("packed", "bf16", 128), dict(nq=16, lq=32, nb=1000, ld=300),
     ("fold", 256, 64, 128, 8, 3, 1, False, False)),
    ("query-set-in-one-tile", KernelSpec("allpairs", "fp16", 128), dict(nq=4, lq=32, nb=1000, ld=300),
     ("fold", 128, 64, 128, 4, 3, 1, False, False)),
    ("query-set-in-one-tile", KernelSpec("packed", "fp16", 128), dict(nq=8, lq=16, nb=4000, ld=300),
     ("fold", 128, 64, 128, 4, 3, 1, False, False)),
    ("medium-query-set", KernelSpec("packed", "fp16", 128), dict(nq=8, lq=32, nb=1000, ld=300),
     ("fold", 128, 64, 128, 4, 1, 1, False, False)),
    ("medium-query-set", KernelSpec("allpairs", "fp32", 128), dict(nq=16, lq=32, nb=1000, ld=300),
     ("fold", 128, 32, 128, 4, 1, 1, False, False)),
    ("small-query-set", KernelSpec("allpairs", "fp16", 128), dict(nq=2, lq=32, nb=1000, ld=300),
     ("fold", 64, 64, 128, 4, 1, 1, False, False)),
    ("small-query-set", KernelSpec("packed", "fp16", 128), dict(nq=16, lq=8, nb=4000, ld=300),
     ("fold", 64, 64, 128, 4, 1, 1, False, False)),
    ("one-tall-query-tile", KernelSpec("padded", "fp16", 128), dict(nq=1, lq=256, nb=1000, ld=1024),
     ("tile", 256, 64, 128, 8, 3, 1, False, False)),
    ("long-query", KernelSpec("padded", "fp16", 128), dict(nq=1, lq=1024, nb=1000, ld=1024),
     ("grid", 256, 64, 128, 8, 3, 1, False, False)),
    ("long-wide-query", KernelSpec("padded", "fp32", 128), dict(nq=1, lq=1024, nb=1000, ld=1024),
     ("grid", 128, 32, 128, 4, 3, 1, False, False)),
    ("medium-query", KernelSpec("padded", "fp16", 128), dict(nq=1, lq=100, nb=1000, ld=1024),
     ("grid", 64, 64, 128, 4, 3, 1, False, False)),
    # Short queries: doc tiles by programs per SM (7.6 -> 16, 11.4 -> 32, 30.3 -> 64).
    ("short-query", KernelSpec("padded", "fp16", 128), dict(nq=1, lq=32, nb=1000, ld=300),
     ("tile", 32, 16, 128, 2, 3, 1, False, True)),
    ("short-query", KernelSpec("padded", "fp16", 128), dict(nq=1, lq=32, nb=1500, ld=256),
     ("tile", 32, 32, 128, 2, 3, 1, False, False)),
    ("short-query", KernelSpec("padded", "bf16", 96, d_mask="lengths"), dict(nq=1, lq=33, nb=4000, ld=256),
     ("tile", 64, 64, 128, 4, 3, 1, True, True)),
    ("short-query", KernelSpec("pairs", "fp16", 128), dict(nq=1, lq=7, nb=4000, ld=300),
     ("tile", 16, 64, 128, 2, 3, 1, False, True)),
    # A folded set under 64 rows is tiled as one query (3 x 1000 programs: 22.7 per SM).
    ("short-query", KernelSpec("allpairs", "fp16", 128), dict(nq=3, lq=16, nb=1000, ld=300),
     ("tile", 16, 64, 128, 2, 3, 1, False, True)),
]


@pytest.mark.parametrize("name, spec, sizes, knobs", REGIME_CASES,
                         ids=[f"{c[0]}-{c[1].layout}-{c[1].dtype}-nq{c[2]['nq']}-lq{c[2]['lq']}" for c in REGIME_CASES])
def test_each_regime_sets_its_knobs(name, spec, sizes, knobs):
    assert heuristic_regime(spec, **sizes) == name, (spec, sizes)
    cfg = default_config(spec, **sizes)
    assert _knobs(cfg) == knobs, (name, spec, sizes, cfg)
    assert (cfg.overlap_max, cfg.defer_max) == (False, False), cfg
    validate(spec, cfg)


def test_every_regime_has_a_case():
    assert {case[0] for case in REGIME_CASES} == {regime.name for regime in REGIMES}


def test_steps_cap_doc_tiles_set_feature_tiles_and_split_docs():
    fp16 = KernelSpec("padded", "fp16", 128)
    # Feature tiles over 128 (dim 160 -> 256) and fp32: doc tiles of at most 32 tokens.
    assert default_config(KernelSpec("padded", "fp16", 160), nq=1, lq=1024, nb=1000, ld=1024).block_d == 32
    assert default_config(KernelSpec("padded", "fp32", 64), nq=1, lq=100, nb=1000, ld=1024).block_d == 32
    # No doc tile past the docs; a length of 0 (unknown) caps nothing.
    assert default_config(fp16, nq=1, lq=100, nb=1000, ld=7).block_d == 16
    assert default_config(fp16, nq=1, lq=100, nb=1000, ld=33).block_d == 64
    assert default_config(fp16, nq=1, lq=100, nb=100_000, ld=0).block_d == 64
    # Exact feature tiles for a multiple of 16 that is no power of two, up to 256.
    for dim, exact, block_k in ((96, True, 128), (48, True, 64), (100, False, 128), (128, False, 128),
                                (320, False, 128), (768, False, 128)):
        cfg = default_config(KernelSpec("padded", "fp16", dim), nq=1, lq=32, nb=1000, ld=300)
        assert (cfg.exact_k, cfg.block_k) == (exact, block_k), (dim, cfg)
    assert default_config(KernelSpec("padded", "fp32", 320), nq=1, lq=32, nb=1000, ld=300).block_k == 64
    # Two docs of 2048 tokens: split 16 ways (the most); of 64 tokens, only while a split
    # keeps a whole doc tile; the persistent grid and a full GPU never split.
    assert default_config(fp16, nq=1, lq=32, nb=2, ld=2048).split_d == 16
    two = default_config(fp16, nq=1, lq=32, nb=2, ld=64)
    assert (two.block_d, two.split_d) == (32, 2), two
    assert default_config(fp16, nq=1, lq=32, nb=2, ld=2048, sm_count=1).split_d == 1
    assert default_config(KernelSpec("allpairs", "bf16", 128), nq=32, lq=32, nb=1, ld=2048).split_d == 1


def test_fit_shrinks_stages_then_query_tiles_then_doc_tiles():
    # dim 320: three 128-feature chunks, each with its doc stages and query tile. The
    # long-query row's 256 x 64 tile on three stages fits no device: Hopper takes two
    # stages and 128 rows, A100 64 rows, Ada 32-token doc tiles too.
    spec, sizes = KernelSpec("padded", "fp16", 320), dict(nq=1, lq=1024, nb=1000, ld=1024)
    for smem_limit, knobs in ((None, (128, 64, 4, 2)), (166_912, (64, 64, 4, 2)), (101_376, (64, 32, 4, 2))):
        assert heuristic_regime(spec, **sizes, smem_limit=smem_limit) == "long-query"
        cfg = default_config(spec, **sizes, smem_limit=smem_limit)
        assert (cfg.block_q, cfg.block_d, cfg.num_warps, cfg.num_stages) == knobs, (smem_limit, cfg)
        validate(spec, cfg, smem_limit=smem_limit)
    # Where even the smallest tile does not fit, it is returned for the launch to report.
    tiny = default_config(KernelSpec("padded", "fp32", 768), nq=1, lq=1024, nb=1000, ld=1024, smem_limit=16_384)
    assert (tiny.block_q, tiny.block_d, tiny.num_stages) == (16, 16, 1), tiny
    with pytest.raises(ConfigError, match="shared memory"):
        validate(KernelSpec("padded", "fp32", 768), tiny, smem_limit=16_384)


def test_every_default_config_is_valid_across_the_grid():
    bad = []
    for spec, sizes in _sample(20_000):
        cfg = default_config(spec, **sizes)
        try:
            validate(spec, cfg, smem_limit=sizes["smem_limit"])
        except ConfigError as err:
            bad.append((spec, sizes, cfg, str(err)))
    assert not bad, f"seed {SEED}: {len(bad)} invalid defaults, first: {bad[0]}"


def test_small_devices_take_valid_defaults_where_the_smallest_tile_fits():
    # 48 KiB and 64 KiB blocks: every spec whose smallest tile fits gets a valid default.
    bad = []
    for spec, sizes in _sample(5000, seed=SEED + 1, smem_limits=(49_152, 65_536)):
        cfg = default_config(spec, **sizes)
        smallest = dataclasses.replace(cfg, block_q=16, block_d=16, num_stages=1, split_d=1)
        try:
            validate(spec, smallest, smem_limit=sizes["smem_limit"])
        except ConfigError:
            continue
        try:
            validate(spec, cfg, smem_limit=sizes["smem_limit"])
        except ConfigError as err:
            bad.append((spec, sizes, cfg, str(err)))
    assert not bad, f"seed {SEED + 1}: {len(bad)} invalid defaults, first: {bad[0]}"


def test_the_regime_names_the_config_it_starts():
    # No step after the regime changes q_mode, so the regime's q_mode is the config's.
    q_modes = {regime.name: dict(regime.knobs)["q_mode"] for regime in REGIMES}
    for spec, sizes in _sample(2000, seed=SEED + 2):
        name = heuristic_regime(spec, **sizes)
        cfg = default_config(spec, **sizes)
        assert cfg.q_mode == q_modes[name], (f"seed {SEED + 2}", spec, sizes, name, cfg)
        assert regime_for(Call(spec, **sizes)).name == name


def test_table_rows_have_unique_names_reasons_and_real_knobs():
    names = [regime.name for regime in REGIMES]
    assert len(names) == len(set(names)), names
    fields = {f.name for f in dataclasses.fields(KernelConfig)}
    for regime in REGIMES:
        assert regime.name and regime.name == regime.name.lower() and " " not in regime.name, regime.name
        reason = regime.reason
        assert reason and "\n" not in reason and len(reason) <= 120, (regime.name, reason)
        assert not any(word in reason.split() for word in ("ms", "µs", "faster", "slower")), (regime.name, reason)
        knobs = dict(regime.knobs)
        assert len(knobs) == len(regime.knobs) and set(knobs) <= fields - {"block_k", "split_d"}, regime
        assert knobs["q_mode"] in Q_MODES, regime
    steps = [step.__name__ for step in STEPS]
    assert len(steps) == len(set(steps)) and all(callable(step) for step in STEPS), steps


def test_table_order_first_match_wins_and_no_row_is_shadowed():
    grid = _sample(6000, seed=SEED + 3)
    calls = [Call(spec, **sizes) for spec, sizes in grid]
    # The last row takes every call; no earlier row does.
    assert all(REGIMES[-1].applies(c) for c in calls)
    for regime in REGIMES[:-1]:
        assert not all(regime.applies(c) for c in calls), regime.name
    # Every row is the first match for some call of the grid.
    hit, names = {regime_for(c).name for c in calls}, {regime.name for regime in REGIMES}
    assert hit == names, f"seed {SEED + 3}: never the first match: {sorted(names - hit)}"
    # Fold and persist rows take folded query sets only, on the layouts that fold.
    for c in calls:
        q_mode = dict(regime_for(c).knobs)["q_mode"]
        if q_mode in ("fold", "persist"):
            assert c.folded, c
        if q_mode == "persist":
            assert c.spec.layout == "allpairs", c


@pytest.mark.parametrize("first, later, spec, sizes", [
    # A 512-row half-precision set over padded docs: the persistent grid, not 256-row fold tiles.
    ("query-set-over-padded-docs", "large-query-set", KernelSpec("allpairs", "fp16", 128), dict(nq=16, lq=32)),
    # 128 rows of four queries: one tile storing each sum, not two 64-row tiles.
    ("query-set-in-one-tile", "small-query-set", KernelSpec("packed", "fp16", 128), dict(nq=4, lq=32)),
    # 512 packed rows in bf16: 256-row fold tiles, not 128-row ones.
    ("large-query-set", "medium-query-set", KernelSpec("packed", "bf16", 64), dict(nq=16, lq=32)),
    ("medium-query-set", "small-query-set", KernelSpec("packed", "fp16", 128), dict(nq=8, lq=32)),
    # A folded set takes its fold row before the one-query rows.
    ("small-query-set", "medium-query", KernelSpec("allpairs", "fp16", 128), dict(nq=2, lq=100)),
    # One 256-token half-precision query: straight-line code, not the query grid.
    ("one-tall-query-tile", "long-wide-query", KernelSpec("padded", "bf16", 128), dict(nq=1, lq=256)),
    ("long-query", "long-wide-query", KernelSpec("padded", "fp16", 128), dict(nq=1, lq=300)),
    ("long-wide-query", "medium-query", KernelSpec("padded", "fp32", 128), dict(nq=1, lq=300)),
    ("medium-query", "short-query", KernelSpec("padded", "fp16", 128), dict(nq=1, lq=65)),
])
def test_order_matters_where_two_rows_apply(first, later, spec, sizes):
    by_name = {regime.name: regime for regime in REGIMES}
    call = Call(spec, **sizes, nb=1000, ld=300)
    assert by_name[first].applies(call) and by_name[later].applies(call), (first, later, call)
    assert [r.name for r in REGIMES].index(first) < [r.name for r in REGIMES].index(later)
    assert heuristic_regime(spec, **sizes, nb=1000, ld=300) == first


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_heuristic_default_passes_static_checks_for_every_preset_bucket(preset):
    from maxsim_forge._problems import Sizes

    for b in PRESETS[preset]:
        layout = "allpairs" if b.layout == "allpairs" and b.nq > 1 else b.layout
        spec = b.spec if layout == b.layout else b.spec.__class__(layout, b.dtype, b.dim)
        cfg = default_config(spec, nq=b.nq, lq=b.lq, nb=b.nb, ld=b.ld, sm_count=132)
        assert check_static(spec, cfg, b.sizes, sm_count=132, smem_limit=232_448) is None, (b, cfg)


@pytest.mark.parametrize("smem_limit", (232_448, 166_912, 101_376))  # H100, A100, Ada
@pytest.mark.parametrize("dtype", ("fp16", "fp32"))
def test_heuristic_default_fits_the_devices_shared_memory(smem_limit, dtype):
    from maxsim_forge.codegen import validate

    for dim in (32, 96, 128, 256, 384):
        for layout, nq, lq in (("padded", 1, 32), ("padded", 1, 300), ("padded", 1, 1024), ("allpairs", 16, 32)):
            spec = KernelSpec(layout, dtype, dim)
            cfg = default_config(spec, nq=nq, lq=lq, nb=1000, ld=1024, sm_count=132, smem_limit=smem_limit)
            validate(spec, cfg, smem_limit=smem_limit)  # raises ConfigError if it does not fit
    # Hopper keeps the 256-row tile for long half-precision queries.
    big = default_config(KernelSpec("padded", "fp16", 128), nq=1, lq=1024, nb=1000, ld=1024)
    assert (big.block_q, big.num_warps, big.q_mode) == (256, 8, "grid")
    # Shared queries over padded docs: the persistent grid, without a doc split even
    # where the docs are too few to fill the GPU; over packed docs, fold.
    for nq, nb in ((8, 1000), (16, 1000), (32, 3)):
        folded = default_config(KernelSpec("allpairs", "bf16", 128), nq=nq, lq=32, nb=nb, ld=300)
        assert (folded.block_q, folded.num_warps, folded.num_stages, folded.q_mode, folded.split_d) == (
            256, 8, 3, "persist", 1), (nq, nb, folded)
    packed = default_config(KernelSpec("packed", "bf16", 128), nq=16, lq=32, nb=1000, ld=300)
    assert (packed.block_q, packed.num_warps, packed.q_mode) == (256, 8, "fold")
    eight = default_config(KernelSpec("packed", "bf16", 128), nq=8, lq=32, nb=1000, ld=300)
    assert (eight.block_q, eight.q_mode) == (128, "fold")
    # A few shared queries: all their rows in one fold tile (each query's sum stored).
    for nq, block_q, stages in ((2, 64, 1), (3, 128, 3), (4, 128, 3)):
        few = default_config(KernelSpec("allpairs", "fp16", 128), nq=nq, lq=32, nb=1000, ld=300)
        assert (few.q_mode, few.block_q, few.num_stages) == ("fold", block_q, stages), (nq, few)
        assert few.block_q >= nq * 32
    # Many short queries: rows that fit one tile stay in it (the store takes 32 queries a
    # step); over packed docs, 65 to 128 rows take two tiles past 8 queries.
    cases = {
        "allpairs": ((8, 16, 128, 1), (16, 8, 128, 1), (128, 1, 128, 1), (4, 32, 128, 1),
                     (16, 4, 64, 1), (32, 2, 64, 1), (64, 1, 64, 1)),
        "packed": ((8, 16, 128, 1), (16, 8, 64, 2), (128, 1, 64, 2), (4, 32, 128, 1),
                   (16, 4, 64, 1), (32, 2, 64, 1), (64, 1, 64, 1)),
    }
    for layout, shapes in cases.items():
        for nq, lq, block_q, tiles in shapes:
            many = default_config(KernelSpec(layout, "fp16", 128), nq=nq, lq=lq, nb=4000, ld=300)
            assert (many.q_mode, many.block_q, -(-nq * lq // many.block_q)) == ("fold", block_q, tiles), (
                layout, nq, lq, many)
