"""Rendering, validation and the module cache."""

from __future__ import annotations

import ast
import itertools
from dataclasses import replace

import jinja2
import pytest

from maxsim_forge.codegen import (
    ConfigError,
    KernelConfig,
    KernelSpec,
    cache_dir,
    is_current,
    kernel_hash,
    load_source,
    render,
    source_key,
    template_hash,
)
from maxsim_forge.templates import MAXSIM_FWD, TEMPLATE_DIR

# Each knob at its extremes (and q_mode at each value).
CORNERS = {
    "block_q": (16, 128),
    "block_d": (16, 128),
    "block_k": (16, 128),
    "num_warps": (1, 8),
    "num_stages": (1, 4),
    "q_mode": ("loop", "grid", "fold", "tile"),
    "split_d": (1, 16),
}
SPECS = [
    KernelSpec(layout, dtype, dim, precision, q_mask, d_mask)
    for layout in ("padded", "allpairs", "packed", "pairs")
    for dtype, precision in (("fp16", "tf32"), ("bf16", "tf32"), ("fp32", "tf32"), ("fp32", "ieee"))
    for dim in (48, 128, 320)
    for q_mask in (("none",) if layout == "pairs" else ("none", "lengths", "mask"))
    for d_mask in (("none",) if layout in ("packed", "pairs") else ("none", "lengths", "mask"))
]


def _valid(spec, cfg) -> bool:
    try:
        render(spec, cfg, smem_limit=10**9)
    except ConfigError:
        return False
    return True


def test_every_corner_renders_to_valid_python():
    rendered = 0
    for values in itertools.product(*CORNERS.values()):
        cfg = KernelConfig(**dict(zip(CORNERS, values)))
        for spec in SPECS[:: max(1, len(SPECS) // 40)] + [SPECS[-1]]:
            if cfg.q_mode == "fold" and spec.layout in ("padded", "pairs"):
                continue
            if not _valid(spec, cfg):  # over the register or tile limits: rejected by design
                continue
            source = render(spec, cfg, smem_limit=10**9)
            ast.parse(source)
            assert f"BLOCK_Q = {cfg.block_q}\n" in source
            assert f"SPLIT_D = {cfg.split_d}\n" in source
            rendered += 1
    assert rendered > 300


def test_every_spec_renders():
    cfg = KernelConfig(block_q=32, block_d=32, block_k=32, q_mode="grid", split_d=2)
    for spec in SPECS:
        ast.parse(render(spec, cfg))


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
    assert KernelConfig(q_mode="persist").key() == "q32-d64-k128-w4-s3-persist-x1"


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
    # A later knob at its default leaves the key of earlier configs as it was.
    assert KernelConfig().key() == "q32-d64-k128-w4-s3-loop-x1"
    assert KernelConfig(block_k=128, exact_k=True).key().endswith("-x1-exact")
    assert KernelConfig(overlap_max=True).key().endswith("-x1-overlap")
    assert KernelConfig(overlap_max=True, masked_loop=True).key().endswith("-x1-overlap-mloop")
    assert KernelConfig(masked_loop=True, defer_max=True).key().endswith("-x1-mloop-defer")
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


def test_template_edit_changes_cache_key(tmp_path):
    spec, cfg = KernelSpec("padded", "fp16", 128), KernelConfig()
    text = (TEMPLATE_DIR / MAXSIM_FWD).read_text()
    edited = tmp_path / MAXSIM_FWD
    edited.write_text(text.replace("# ---- launcher", "# ---- launcher (edited)"))
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(tmp_path)), undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    original, changed = render(spec, cfg), render(spec, cfg, env=env)
    assert source_key(original) != source_key(changed)
    assert template_hash() != template_hash(env)
    # And the same template renders to the same key (the cache is content-addressed).
    assert source_key(render(spec, cfg)) == source_key(original)


def _env(folder):
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(folder)), undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=True)


@pytest.mark.parametrize("layout", ("padded", "pairs"))
def test_kernel_hash_follows_the_code_not_the_comments(tmp_path, layout):
    cfg = KernelConfig(block_q=16, block_d=32, block_k=64, num_warps=2, num_stages=2)
    text = (TEMPLATE_DIR / MAXSIM_FWD).read_text()
    (tmp_path / "comment").mkdir()
    (tmp_path / "comment" / MAXSIM_FWD).write_text(
        text.replace("# ---- launcher", "# ---- launcher (edited)\n\n{% if SPLIT %}\n# a new knob's block\n{% endif %}"))
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / MAXSIM_FWD).write_text(text.replace("m_i = tl.where(m_i == float(\"-inf\"), 0.0, m_i)",
                                                             "m_i = tl.where(m_i == float(\"-inf\"), 1.0, m_i)"))
    base = kernel_hash(layout, "fp16", 64, "native", cfg)
    assert kernel_hash(layout, "fp16", 64, "native", cfg, _env(tmp_path / "comment")) == base
    assert template_hash(_env(tmp_path / "comment")) != template_hash()
    assert kernel_hash(layout, "fp16", 64, "native", cfg, _env(tmp_path / "code")) != base
    # Every knob and every part of the family enters it.
    assert kernel_hash(layout, "bf16", 64, "native", cfg) != base
    assert kernel_hash(layout, "fp16", 64, "native", replace(cfg, num_stages=3)) != base
    # A row is current by its kernel hash; one without is judged by its template hash.
    row = {"layout": layout, "dtype": "fp16", "dim": 64, "precision": "native", "config": cfg.to_dict()}
    assert is_current({**row, "kernel_hash": base, "template_hash": "0" * 16})
    assert not is_current({**row, "kernel_hash": "f" * 16, "template_hash": template_hash()})
    assert is_current({**row, "kernel_hash": "", "template_hash": template_hash()})
    assert not is_current({**row, "kernel_hash": "", "template_hash": "0" * 16})
    assert not is_current({**row, "config": {"block_q": 3}, "kernel_hash": base})


def test_strict_undefined_catches_missing_values(tmp_path):
    (tmp_path / MAXSIM_FWD).write_text("x = {{ NOT_A_VALUE }}\n")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(tmp_path)), undefined=jinja2.StrictUndefined)
    with pytest.raises(jinja2.UndefinedError):
        render(KernelSpec("padded", "fp16", 128), KernelConfig(), env=env)


def test_cache_file_is_content_hashed_and_imported_once():
    source = render(KernelSpec("padded", "fp16", 64), KernelConfig(block_k=64))
    first = load_source(source)
    path = cache_dir() / f"maxsim_fwd_{source_key(source)}.py"
    assert path.read_text() == source
    assert load_source(source) is first
    assert first.BLOCK_K == 64 and callable(first.launch)


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
