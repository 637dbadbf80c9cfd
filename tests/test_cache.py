"""The module cache (codegen/_cache.py): content-hashed files, imported once."""

from __future__ import annotations

from maxsim_forge.codegen import KernelConfig, KernelSpec, Variant, cache_dir, load_source, load_variant, render, source_key


def test_cache_file_is_content_hashed_and_imported_once():
    source = render(KernelSpec("padded", "fp16", 64), KernelConfig(block_k=64))
    first = load_source(source)
    path = cache_dir() / f"maxsim_fwd_{source_key(source)}.py"
    assert path.read_text() == source
    assert load_source(source) is first
    assert callable(first._maxsim_fwd_kernel) and not hasattr(first, "launch")


def test_a_variant_is_loaded_once_with_its_launchers():
    spec = KernelSpec("allpairs", "fp16", 64)
    plain, split = KernelConfig(block_k=64), KernelConfig(block_k=64, split_d=2)
    variant = load_variant(spec, plain)
    assert isinstance(variant, Variant) and load_variant(spec, plain) is variant
    assert variant.name == "allpairs-fp16-dim64-native-qmask_none-docmask_none.bq32-bdoc64-bk64-w4-s3-loop-split1"
    assert variant.reduce is None and variant.fwd.meta["BLOCK_K"] == 64 and variant.fwd.meta["num_warps"] == 4
    with_reduce = load_variant(spec, split)
    assert with_reduce.reduce is not None and with_reduce.reduce.meta == {"SPLIT_D": 2, "BLOCK_R": 64, "num_warps": 4}
