"""The ``maxsim-forge`` group and what its commands share: options, tables, opening
databases and output paths, and turning failures into one-line errors.

Errors: a mistake on the command line (an option's value, a file that is not there, a
folder where a file belongs) is a usage error, exit 2 (``click.BadParameter`` naming the
option, or ``click.UsageError``); a command that ran and failed (a database that cannot
be read or written, a bad row, an unusable kernel cache) is ``click.ClickException``,
exit 1. Either ends in one ``Error: ...`` line, never a traceback.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import click

from ..codegen import CacheError, ConfigError
from ..tuned_db import TunedDB, TunedDBError, user_db_path


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="maxsim-forge")
def main() -> None:
    """maxsim-forge: generated, autotuned Triton kernels for MaxSim scoring."""


def use_interpreter_without_cuda() -> bool:
    """Without CUDA, route kernels through Triton's interpreter (before triton loads)."""
    import torch

    if torch.cuda.is_available():
        return False
    os.environ.setdefault("TRITON_INTERPRET", "1")
    return True


def table(headers: tuple[str, ...], rows: list[tuple]) -> str:
    rows = [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join([line, "  ".join("-" * w for w in widths), *body])


DB_OPTION = click.option("--db", "db_path", type=click.Path(dir_okay=False), default=None,
                         help="Database (default: MAXSIM_FORGE_DB or the user cache).")

# Seeds reach torch.Generator (64-bit) and Optuna's sampler (numpy's, 32-bit): the
# narrower range, so a seed every command takes.
SEED = click.IntRange(0, 2**32 - 1)


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def _os_text(exc: OSError) -> str:
    return f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc)


@contextlib.contextmanager
def failures(prefix: str = "") -> Iterator[None]:
    """What a library raises while a command runs, as one ``Error:`` line (exit 1)."""
    try:
        yield
    except click.ClickException:
        raise
    except OSError as exc:
        raise click.ClickException(one_line(prefix + _os_text(exc))) from exc
    except (TunedDBError, CacheError, ConfigError, ValueError, TypeError, KeyError, RuntimeError, OverflowError,
            sqlite3.Error) as exc:
        raise click.ClickException(one_line(prefix + str(exc))) from exc


def _db_usage_error(db_path: str | None, message: str) -> click.UsageError:
    if db_path is not None:
        return click.BadParameter(message, param_hint="'--db'")
    if os.environ.get("MAXSIM_FORGE_DB"):
        return click.UsageError(f"MAXSIM_FORGE_DB: {message}")
    return click.UsageError(f"{message} (the default database; pass --db or set MAXSIM_FORGE_DB)")


def db_file(db_path: str | None) -> Path:
    """The database a command names (``--db``, else MAXSIM_FORGE_DB, else the user cache);
    a folder there is a usage error naming where the path came from."""
    path = Path(db_path) if db_path else user_db_path()
    if path.is_dir():
        raise _db_usage_error(db_path, f"{path} is a folder; give a database file such as {path / 'tuned.db'}")
    return path


def open_read(db_path: str | None, *, path: Path | None = None) -> TunedDB:
    """A database opened read-only (never created, migrated or switched to WAL); a missing
    file is a usage error, one that cannot be read a failure naming it."""
    path = path or db_file(db_path)
    if not path.is_file():
        raise _db_usage_error(db_path, f"no tuned database at {path}; `maxsim-forge tune` writes one")
    with failures():
        return TunedDB(path, read_only=True)


def open_write(db_path: str | None) -> TunedDB:
    """A database opened to write (created and migrated if need be); a ``--db`` in a
    folder that does not exist is a usage error (the default's folders are made)."""
    path = writable_db_file(db_path)
    with failures():
        return TunedDB(path)


def writable_db_file(db_path: str | None) -> Path:
    """The database a writing command names, in a folder that exists where ``--db`` names it."""
    path = db_file(db_path)
    if db_path:
        in_existing_folder(path, "--db")
    return path


def check_cache() -> None:
    """The kernel cache folder is usable, before a command compiles anything."""
    from ..codegen import cache_dir

    with failures():
        cache_dir()


def out_file(out: str, option: str = "--out") -> Path:
    """A file to write: not a folder, in a folder that exists (it may be replaced)."""
    path = Path(out)
    if path.is_dir():
        raise click.BadParameter(f"{path} is a folder; give a file name such as {path / 'winners.json'}",
                                 param_hint=f"'{option}'")
    in_existing_folder(path, option)
    return path


def out_folder(out: str, option: str = "--out") -> Path:
    """A folder to write into: an existing folder, or a new one in a folder that exists."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise click.BadParameter(f"{path} is a file; give a folder (new or existing)", param_hint=f"'{option}'")
    in_existing_folder(path, option)
    return path


def in_existing_folder(path: Path, option: str) -> None:
    """An output goes in a folder that exists: a typo in its path makes no folders."""
    if not path.parent.is_dir():
        raise click.BadParameter(f"folder {path.parent} does not exist; create it first", param_hint=f"'{option}'")
