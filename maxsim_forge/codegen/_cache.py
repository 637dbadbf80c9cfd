"""Rendered source -> a content-hashed file in the cache directory -> an imported module.

Each module is imported once per process and kept; Triton keeps its own compile
cache (``TRITON_CACHE_DIR``) beside ours.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import threading
from pathlib import Path
from types import ModuleType

from ._config import KernelConfig, KernelSpec
from ._render import interpreting, render, source_key
from ._variant import Variant

_modules: dict[str, ModuleType] = {}
_variants: dict[tuple, Variant] = {}
_lock = threading.Lock()


def cache_dir() -> Path:
    """``MAXSIM_FORGE_CACHE``, else ``$XDG_CACHE_HOME/maxsim-forge/kernels``."""
    env = os.environ.get("MAXSIM_FORGE_CACHE")
    if env:
        root = Path(env)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        root = Path(base) / "maxsim-forge" / "kernels"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:
        if env:  # a folder the user chose and we cannot use: say so
            raise
        # A read-only home (some containers): fall back to a private temporary folder.
        root = Path(tempfile.gettempdir()) / f"maxsim-forge-kernels-{os.getuid()}"
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return root


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".py")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def load_source(source: str) -> ModuleType:
    """Import rendered source through its content-hashed cache file (once per process)."""
    key = source_key(source)
    with _lock:
        module = _modules.get(key)
        if module is not None:
            return module
        path = cache_dir() / f"maxsim_fwd_{key}.py"
        if not path.exists() or path.read_text() != source:
            _write_atomic(path, source)
        name = f"maxsim_forge._generated.k_{key}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # triton.jit reads the source through inspect
        spec.loader.exec_module(module)
        _modules[key] = module
        return module


def load_variant(
    spec: KernelSpec, cfg: KernelConfig, *, smem_limit: int | None = None
) -> Variant:
    """One variant ready to launch; rendered and imported on first use only."""
    key = (spec, cfg, smem_limit, interpreting())
    variant = _variants.get(key)
    if variant is None:
        variant = Variant(spec, cfg, load_source(render(spec, cfg, smem_limit=smem_limit)))
        _variants[key] = variant
    return variant
