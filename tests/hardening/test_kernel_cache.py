"""Finding 1: the kernel cache runs only code it rendered, from a folder only its user can write."""

from __future__ import annotations

import os

import pytest

from maxsim_forge.codegen import CacheError, KernelConfig, KernelSpec, cache_dir, load_source, render, source_key


def _fresh_source(tag: str) -> str:
    # A module no earlier test built in this process: the cache must take the file path.
    return render(KernelSpec("padded", "fp16", 64), KernelConfig(block_k=64)) + f"\nTAG = {tag!r}\n"


def test_a_planted_file_or_bytecode_is_never_run(tmp_path, monkeypatch):
    import py_compile

    monkeypatch.setenv("MAXSIM_FORGE_CACHE", str(tmp_path))
    tmp_path.chmod(0o700)
    source = _fresh_source("planted")
    path = tmp_path / f"maxsim_fwd_{source_key(source)}.py"
    # An attacker writes the expected file with other code, and bytecode that matches it.
    evil = source.replace("TAG = 'planted'", "TAG = 'evil'")
    path.write_text(evil)
    py_compile.compile(str(path), cfile=str(tmp_path / "__pycache__" / f"{path.stem}.cpython-311.pyc"))
    module = load_source(source)
    assert module.TAG == "planted"
    assert path.read_text() == source, "the planted file was not replaced"
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    # triton.jit reads the kernel's source back: it gets the rendered text, not the file.
    import inspect

    path.write_text(evil.replace("def _row_scores", "def _row_scores_evil"))
    assert "def _row_scores(m_i, row_valid)" in inspect.getsource(module._row_scores.fn
                                                                   if hasattr(module._row_scores, "fn")
                                                                   else module._row_scores)


@pytest.mark.parametrize("mode", (0o777, 0o775, 0o722))
def test_a_cache_folder_others_can_write_is_refused(tmp_path, monkeypatch, mode):
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(mode)
    monkeypatch.setenv("MAXSIM_FORGE_CACHE", str(folder))
    with pytest.raises(CacheError, match=r"writable by others .*chmod go-w"):
        cache_dir()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown")
def test_a_cache_folder_of_another_user_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "theirs"
    folder.mkdir(mode=0o700)
    os.chown(folder, 12345, 12345)
    monkeypatch.setenv("MAXSIM_FORGE_CACHE", str(folder))
    with pytest.raises(CacheError, match="belongs to uid 12345, not this user"):
        cache_dir()


def test_an_unusable_cache_folder_is_named(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("MAXSIM_FORGE_CACHE", str(blocker / "kernels"))
    with pytest.raises(CacheError, match="MAXSIM_FORGE_CACHE=.* cannot be created"):
        cache_dir()
    monkeypatch.setenv("MAXSIM_FORGE_CACHE", str(blocker))
    with pytest.raises(CacheError, match="is not a folder"):
        cache_dir()


def test_a_new_cache_folder_is_private(tmp_path, monkeypatch):
    monkeypatch.setenv("MAXSIM_FORGE_CACHE", str(tmp_path / "a" / "b"))
    root = cache_dir()
    assert root == tmp_path / "a" / "b" and oct(root.stat().st_mode & 0o777) == oct(0o700)
    assert oct((tmp_path / "a").stat().st_mode & 0o777) == oct(0o700)  # the folders above it too
    monkeypatch.delenv("MAXSIM_FORGE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "maxsim-forge" / "kernels"
    for folder in ("xdg", "xdg/maxsim-forge", "xdg/maxsim-forge/kernels"):
        assert oct((tmp_path / folder).stat().st_mode & 0o777) == oct(0o700), folder


def test_a_cache_folder_given_as_a_link_is_named_as_one(tmp_path, monkeypatch):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    monkeypatch.setenv("MAXSIM_FORGE_CACHE", str(tmp_path / "link"))
    with pytest.raises(CacheError, match=f"is a symbolic link; set MAXSIM_FORGE_CACHE to the folder itself \\({real}\\)"):
        cache_dir()
