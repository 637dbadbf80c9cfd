"""Rendered source -> a content-hashed file in the cache folder -> a module built from
the rendered text itself.

The module is compiled from the source this process rendered, never from the file or
any bytecode beside it: the file is written (atomically, readable by its owner only) for
people and tracebacks to read, and Python's source cache is given the same text, which is
what ``triton.jit`` reads back. A planted file or ``__pycache__`` entry is never run. The
folder must belong to this user and be writable by nobody else. Each module is built once
per process; Triton keeps its own compile cache (``TRITON_CACHE_DIR``) beside ours.
"""

from __future__ import annotations

import base64
import hashlib
import json
import linecache
import logging
import os
import re
import stat
import sys
import tempfile
import threading
from pathlib import Path
from types import ModuleType

from ._config import KernelConfig, KernelSpec
from ._render import interpreting, render, source_key
from ._variant import Variant

log = logging.getLogger("maxsim_forge")

_modules: dict[str, ModuleType] = {}
_variants: dict[tuple, Variant] = {}
_lock = threading.Lock()


class CacheError(RuntimeError):
    """The kernel cache folder cannot be used safely; the message says why and what to do."""


def _default_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "maxsim-forge" / "kernels"


def _check_private(root: Path, origin: str) -> None:
    """The folder is a directory of this user's that no one else may write."""
    try:
        st = os.lstat(root)
    except OSError as exc:
        raise CacheError(f"kernel cache {root} ({origin}) cannot be read: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise CacheError(f"kernel cache {root} ({origin}) is a symbolic link; set MAXSIM_FORGE_CACHE to the "
                         f"folder itself ({os.path.realpath(root)}), which must be this user's own")
    if not stat.S_ISDIR(st.st_mode):
        raise CacheError(f"kernel cache {root} ({origin}) is not a folder; set MAXSIM_FORGE_CACHE to one")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise CacheError(
            f"kernel cache {root} ({origin}) belongs to uid {st.st_uid}, not this user ({os.getuid()}): "
            "code from it would run as you; set MAXSIM_FORGE_CACHE to a folder of your own"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CacheError(
            f"kernel cache {root} ({origin}) is writable by others (mode {stat.S_IMODE(st.st_mode):o}); "
            f"run `chmod go-w {root}` or set MAXSIM_FORGE_CACHE to a private folder"
        )


def private_folders(path: Path) -> None:
    """``path`` and every missing folder above it, each made 0700 (``mkdir(parents=True)``
    would give the ones above the umask's mode)."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)


def cache_dir() -> Path:
    """``MAXSIM_FORGE_CACHE``, else ``$XDG_CACHE_HOME/maxsim-forge/kernels`` (where the home
    is read-only, a private folder in the temporary directory). Created private if missing;
    :class:`CacheError` if it exists but another user owns it or others may write it."""
    env = os.environ.get("MAXSIM_FORGE_CACHE")
    root, origin = (Path(env), "MAXSIM_FORGE_CACHE") if env else (_default_root(), "the default")
    if root.exists() and not root.is_dir():
        raise CacheError(f"kernel cache {root} ({origin}) is not a folder; set MAXSIM_FORGE_CACHE to one")
    try:
        private_folders(root)
    except OSError as exc:
        if env:  # a folder the user chose and we cannot use: say so
            raise CacheError(
                f"MAXSIM_FORGE_CACHE={env} cannot be created ({exc.strerror}); "
                "point it at a folder you can write"
            ) from None
        # A read-only home (some containers): a private folder in the temporary directory.
        root, origin = Path(tempfile.gettempdir()) / f"maxsim-forge-kernels-{os.getuid()}", "the fallback"
        private_folders(root)
    _check_private(root, origin)
    return root


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".py")  # mode 0600
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_source(source: str) -> ModuleType:
    """A module built from rendered source (once per process), its text kept in a
    content-hashed cache file."""
    key = source_key(source)
    with _lock:
        module = _modules.get(key)
        if module is not None:
            return module
        path = cache_dir() / f"maxsim_fwd_{key}.py"
        try:
            current = path.read_text() == source
        except (OSError, UnicodeDecodeError):
            current = False
        if not current:
            try:
                _write_atomic(path, source)
            except OSError as exc:
                raise CacheError(f"kernel cache file {path} cannot be written: {exc.strerror}") from None
        filename = str(path)
        # triton.jit reads a kernel's source back through linecache: give it this text,
        # never the file's (an entry without a modification time is never reloaded).
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        name = f"maxsim_forge._generated.k_{key}"
        module = ModuleType(name)
        module.__file__ = filename
        sys.modules[name] = module  # triton.jit looks its module up by name
        exec(compile(source, filename, "exec"), module.__dict__)
        _modules[key] = module
        return module


def load_variant(
    spec: KernelSpec, cfg: KernelConfig, *, smem_limit: int | None = None
) -> Variant:
    """One variant ready to launch; rendered and built on first use only."""
    key = (spec, cfg, smem_limit, interpreting())
    variant = _variants.get(key)
    if variant is None:
        variant = Variant(spec, cfg, load_source(render(spec, cfg, smem_limit=smem_limit)))
        _variants[key] = variant
    return variant


# A process that compiled a variant leaves a mark in the kernel cache naming Triton's cache
# entries of the call's kernels; a later process that finds the mark and those entries
# waits on its first call for the kernels, which Triton loads from its cache instead of
# compiling them, rather than scoring that call with torch.
_ENTRY = re.compile(r"[A-Z2-7]{1,128}")  # Triton's entry folders: the base32 of a kernel's hash


def _triton_cache_dir() -> Path:
    try:
        from triton import knobs

        folder = knobs.cache.dir
    except (ImportError, AttributeError):
        folder = None
    if not folder:
        home = os.environ.get("TRITON_HOME") or os.path.expanduser("~")
        folder = os.environ.get("TRITON_CACHE_DIR") or os.path.join(home, ".triton", "cache")
    return Path(os.path.abspath(folder))


def _gpu_name(device) -> str:
    if device.type != "cuda":
        return "interpreter"
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    return f"{torch.cuda.get_device_name(device)} sm_{major}{minor}"


def _mark(variant: Variant, q, d, kwargs: dict, folder: Path) -> tuple[Path, str, list]:
    """The mark's path, the call it names (the variant's source, its launches'
    specialisations, the GPU, the Triton, Triton's cache folder) and the kernels this
    process compiled for those launches (None where none)."""
    import triton

    keys, kernels = variant.compiled_kernels(q, d, **kwargs)
    text = repr((variant.module.__name__, variant.name, keys, _gpu_name(q.device), triton.__version__, str(folder)))
    return cache_dir() / "compiled" / hashlib.sha256(text.encode()).hexdigest()[:32], text, kernels


def _entries(kernels: list) -> list[str] | None:
    """Triton's cache folders of compiled kernels (the base32 of each one's hash, as its
    file cache names them); None if one is unknown (not compiled here, or the interpreter)."""
    names = []
    for kernel in kernels:
        digest = getattr(kernel, "hash", None)
        try:
            names.append(base64.b32encode(bytes.fromhex(digest)).decode().rstrip("="))
        except (TypeError, ValueError):
            return None
    return names or None


def _has_entry(folder: Path, name: str) -> bool:
    """Triton's cache holds this entry whole: its group file is written last."""
    try:
        return any(p.name.startswith("__grp__") for p in (folder / name).iterdir())
    except OSError:
        return False


def compiled_before(variant: Variant, q, d, kwargs: dict) -> bool:
    """Whether a process of this user compiled ``variant`` for a call like this one and
    Triton's cache (the one this process reads) still holds those kernels. Never raises:
    False when unsure. Triton may still compile (say, another ptxas behind the same
    Triton): a wrong True costs one compile on the calling thread."""
    try:
        folder = _triton_cache_dir()
        path = _mark(variant, q, d, kwargs, folder)[0]
        entries = json.loads(path.read_text()).get("entries") if path.is_file() else None
        return (isinstance(entries, list) and bool(entries)
                and all(isinstance(e, str) and _ENTRY.fullmatch(e) and _has_entry(folder, e) for e in entries))
    except Exception as exc:  # noqa: BLE001 - a mark is a hint; without one the kernel compiles as usual
        log.debug("maxsim-forge: compile mark unreadable (%s)", exc)
        return False


def mark_compiled(variant: Variant, q, d, kwargs: dict) -> None:
    """Leave the mark :func:`compiled_before` looks for, once this process holds the
    call's compiled kernels (best effort: nothing where the cache folder cannot be
    written, or under the interpreter)."""
    try:
        folder = _triton_cache_dir()
        path, text, kernels = _mark(variant, q, d, kwargs, folder)
        entries = _entries(kernels)
        if entries is None:
            return
        body = json.dumps({"call": text, "entries": entries}, indent=1) + "\n"
        if path.is_file() and path.read_text() == body:
            return
        path.parent.mkdir(mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(body)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    except Exception as exc:  # noqa: BLE001 - best effort
        log.debug("maxsim-forge: compile mark not written (%s)", exc)
