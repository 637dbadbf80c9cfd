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


def _marked_call(nb: int, dim: int = 32):
    from maxsim_forge._inputs import prepare_padded

    from conftest import randn

    prep = prepare_padded(randn(8, dim), randn(nb, 9, dim))
    return load_variant(prep.spec, KernelConfig(block_k=dim)), prep.q, prep.d, prep.launch_kwargs


def test_a_compile_mark_holds_while_triton_holds_the_kernels_of_such_a_call(monkeypatch, tmp_path):
    import base64
    import json

    from maxsim_forge.codegen import compiled_before, mark_compiled

    from _helpers import ENTRY, HASH, compiled_here

    assert base64.b32encode(bytes.fromhex(HASH)).decode().rstrip("=") == ENTRY
    compiled_here(monkeypatch, tmp_path)
    call = _marked_call(5)
    assert not compiled_before(*call)
    mark_compiled(*call)
    marks = list((tmp_path / "kernels" / "compiled").iterdir())
    assert len(marks) == 1 and json.loads(marks[0].read_text())["entries"] == [ENTRY]
    assert compiled_before(*call)
    assert compiled_before(*_marked_call(7))  # 5 and 7 docs: the same specialisation
    assert not compiled_before(*_marked_call(16))  # a multiple of 16 specialises apart
    assert not compiled_before(*_marked_call(5, dim=64))  # another variant
    mark_compiled(*call)  # marking twice leaves one mark
    assert len(list((tmp_path / "kernels" / "compiled").iterdir())) == 1
    # Another Triton cache folder: the mark says nothing about it.
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "other"))
    assert not compiled_before(*call)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    # Triton's entry emptied (or written in part: no group file yet), the folder kept.
    (tmp_path / "triton" / ENTRY / "__grp__kernel.json").unlink()
    assert not compiled_before(*call)
    # A mark naming anything but an entry of that folder is no evidence.
    (tmp_path / "triton" / ENTRY / "__grp__kernel.json").write_text("{}")
    marks[0].write_text(json.dumps({"entries": ["../" + ENTRY]}))
    assert not compiled_before(*call)
    marks[0].write_text("not json")
    assert not compiled_before(*call)


def test_no_mark_without_compiled_kernels(monkeypatch, tmp_path):
    """The interpreter (or a Triton that gives no compiled kernel back) leaves no mark."""
    from maxsim_forge.codegen import compiled_before, mark_compiled

    monkeypatch.setenv("MAXSIM_FORGE_CACHE", str(tmp_path / "kernels"))
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    call = _marked_call(5)
    mark_compiled(*call)
    assert not (tmp_path / "kernels" / "compiled").exists() and not compiled_before(*call)


def test_compile_marks_never_raise(monkeypatch, tmp_path):
    from _helpers import compiled_here

    from maxsim_forge.codegen import compiled_before, mark_compiled

    compiled_here(monkeypatch, tmp_path)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("MAXSIM_FORGE_CACHE", str(blocker))  # cache_dir() raises CacheError
    call = _marked_call(5)
    mark_compiled(*call)
    assert not compiled_before(*call)
