"""Specs, configs and the checks that run before rendering (codegen/_config.py)."""

from __future__ import annotations

import ast

import pytest

from maxsim_forge.codegen import ConfigError, KernelConfig, KernelSpec, render


def test_fold_only_for_shared_queries():
    with pytest.raises(ConfigError, match="q_mode='fold' contradicts layout 'pairs'"):
        render(KernelSpec("pairs", "fp16", 128), KernelConfig(q_mode="fold"))


def test_persistent_grid_only_for_shared_queries_over_padded_docs():
    ast.parse(render(KernelSpec("allpairs", "fp16", 128, d_mask="lengths"), KernelConfig(q_mode="persist")))
    with pytest.raises(ConfigError, match="q_mode='persist' contradicts layout 'padded'"):
        render(KernelSpec("padded", "fp16", 128), KernelConfig(q_mode="persist"))
    with pytest.raises(ConfigError, match="q_mode='persist' contradicts layout 'packed': its loop counts doc tiles"):
        render(KernelSpec("packed", "fp16", 128), KernelConfig(q_mode="persist"))
    with pytest.raises(ConfigError, match="split_d must be 1; got split_d=2"):
        render(KernelSpec("allpairs", "fp16", 128), KernelConfig(q_mode="persist", split_d=2))
    assert KernelConfig(q_mode="persist").key() == "bq32-bdoc64-bk128-w4-s3-persist-split1"


@pytest.mark.parametrize(
    "changes, knob",
    [
        ({"block_q": 24}, "block_q=24"),
        ({"block_d": 8}, "block_d=8"),
        ({"block_k": 512}, "block_k=512"),
        ({"num_warps": 3}, "num_warps=3"),
        ({"num_stages": 0}, "num_stages=0"),
        ({"q_mode": "tiles"}, "q_mode='tiles'"),
        ({"split_d": 3}, "split_d=3"),
    ],
)
def test_invalid_knob_is_named(changes, knob):
    with pytest.raises(ConfigError, match=knob.replace("(", r"\(")):
        render(KernelSpec("allpairs", "fp16", 128), KernelConfig(**changes))


def test_exact_k_takes_uneven_dims_only():
    spec = KernelSpec("padded", "fp16", 96)
    render(spec, KernelConfig(block_k=128, exact_k=True))
    for dim, block_k in ((128, 128), (96, 64), (100, 128), (320, 256)):
        with pytest.raises(ConfigError, match="exact_k=True takes a dim"):
            render(KernelSpec("padded", "fp16", dim), KernelConfig(block_k=block_k, exact_k=True))
    with pytest.raises(ConfigError, match="exact_k=1; accepted: True, False"):
        render(spec, KernelConfig(block_k=128, exact_k=1))
    # A later knob at its default leaves the key of earlier configs as it was; a knob
    # that is on appears by its own name.
    assert KernelConfig().key() == "bq32-bdoc64-bk128-w4-s3-loop-split1"
    assert KernelConfig(block_k=128, exact_k=True).key().endswith("-split1-exact_k")
    assert KernelConfig(overlap_max=True).key().endswith("-split1-overlap_max")
    assert KernelConfig(overlap_max=True, masked_loop=True).key().endswith("-split1-overlap_max-masked_loop")
    assert KernelConfig(masked_loop=True, defer_max=True).key().endswith("-split1-masked_loop-defer_max")
    with pytest.raises(ConfigError, match="set at most one of them"):
        render(spec, KernelConfig(block_k=128, overlap_max=True, defer_max=True))
    with pytest.raises(ConfigError, match="defer_max=None; accepted: True, False"):
        render(spec, KernelConfig(block_k=128, defer_max=None))
    with pytest.raises(ConfigError, match="masked_loop=1; accepted: True, False"):
        render(spec, KernelConfig(block_k=128, masked_loop=1))
    with pytest.raises(ConfigError, match="overlap_max='yes'; accepted: True, False"):
        render(spec, KernelConfig(block_k=128, overlap_max="yes"))


def test_shared_memory_estimate_rejects_big_tiles():
    spec = KernelSpec("padded", "fp32", 256)
    cfg = KernelConfig(block_q=128, block_d=128, block_k=256, num_warps=8, num_stages=4)
    with pytest.raises(ConfigError, match="shared memory"):
        render(spec, cfg)
    # Tiles over Hopper's limit fit a device that claims more.
    big = KernelConfig(block_q=32, block_d=64, block_k=256, num_warps=8, num_stages=4)
    with pytest.raises(ConfigError, match="shared memory"):
        render(spec, big)
    render(spec, big, smem_limit=300 * 1024)


def test_register_estimate_rejects_huge_tile_on_one_warp():
    with pytest.raises(ConfigError, match="registers per thread"):
        render(KernelSpec("padded", "fp16", 128), KernelConfig(block_q=128, block_d=128, num_warps=1))


def test_contradicting_masks_rejected():
    with pytest.raises(ConfigError, match="d_mask='lengths' contradicts layout 'packed'"):
        render(KernelSpec("packed", "fp16", 128, d_mask="lengths"), KernelConfig())
    with pytest.raises(ConfigError, match="q_mask='mask' contradicts layout 'pairs'"):
        render(KernelSpec("pairs", "fp16", 128, q_mask="mask"), KernelConfig())


def test_unknown_config_knob():
    with pytest.raises(ConfigError, match="unknown config knob"):
        KernelConfig.from_dict({"block_m": 64})


def test_shared_memory_estimate_covers_split_dims():
    # Compiled by Triton 3.6 for sm_90 (an H100), dim 320 at 3 stages: each feature chunk
    # of a split dim had buffers of its own, and these launches ran out of shared memory.
    from maxsim_forge.codegen import smem_bytes

    fold = dict(num_warps=4, num_stages=3, q_mode="fold")
    assert smem_bytes(KernelSpec("allpairs", "fp16", 320), KernelConfig(block_q=128, block_d=64, block_k=128, **fold)) >= 245760
    assert smem_bytes(KernelSpec("allpairs", "fp32", 320), KernelConfig(block_q=128, block_d=32, block_k=64, **fold)) >= 286720
    # One chunk: the doc tiles of every stage and the query tile, as before.
    assert smem_bytes(KernelSpec("padded", "fp16", 128), KernelConfig(block_q=256, block_d=64, block_k=128, num_stages=3)) == (
        3 * 64 * 128 * 2 + 256 * 128 * 2)


def test_variant_names_cannot_be_misread():
    # The dim, the doc tile and the doc mask each say which they are.
    spec = KernelSpec("allpairs", "bf16", 96, q_mask="lengths", d_mask="mask")
    assert spec.key() == "allpairs-bf16-dim96-native-qmask_lengths-docmask_mask"
    names = {KernelConfig(**{knob: value}).key() for knob, value in (
        ("block_q", 64), ("block_d", 16), ("block_k", 64), ("split_d", 2))}
    assert names == {"bq64-bdoc64-bk128-w4-s3-loop-split1", "bq32-bdoc16-bk128-w4-s3-loop-split1",
                     "bq32-bdoc64-bk64-w4-s3-loop-split1", "bq32-bdoc64-bk128-w4-s3-loop-split2"}


@pytest.mark.parametrize("knob, value", [
    ("num_warps", 2.0), ("num_warps", True), ("num_stages", 3.0), ("num_stages", True),
    ("split_d", True), ("split_d", 2.0), ("block_q", 32.0), ("block_d", True),
])
def test_knob_types_are_exact(knob, value):
    # A bool is no warp count and 2.0 is no split: values read from files must be exact.
    with pytest.raises(ConfigError, match=f"{knob}={value!r}"):
        render(KernelSpec("allpairs", "fp16", 128), KernelConfig(**{knob: value}))
