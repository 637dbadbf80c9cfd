"""The schema, as named, ordered, transactional migrations; the version lives in the DB.

Migration N brings a database from version N - 1 to N. Each runs in one write
transaction together with the version bump, the write lock taken first and the version
read again inside it, so a database is always at some whole version and processes that
open a fresh file at once never run a step twice. A database newer than this package
knows is refused, never rewritten.

Opening: a read-only open never creates, migrates or switches a file to WAL; it waits
for a writer a bounded time, and reads a WAL database in a folder it cannot write.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import sqlite_utils

BUCKET_COLUMNS = ("layout", "dtype", "precision", "dim", "nq_bucket", "lq_bucket", "ld_bucket", "nb_bucket", "docs",
                  "codes", "op")
WINNER_KEY = ("gpu",) + BUCKET_COLUMNS


# How long a writable open waits for another writer (several tuning processes may write
# at once), and a read-only one by default (a lookup waits less: see runtime/_lookup.py).
WRITE_WAIT_S = 60.0
READ_WAIT_S = 2.0


class TunedDBError(RuntimeError):
    """A database that cannot be opened, read or written; the message names the file."""


class SchemaError(TunedDBError):
    """A database this package cannot read: newer schema, or not ours (or not SQLite)."""


class LockedError(TunedDBError):
    """A writer held the database for longer than the open would wait; try again later."""


def _m1_initial(db: sqlite_utils.Database) -> None:
    # Version 1: winners and trials, keyed by GPU and bucket (no provenance columns yet).
    key_cols = {"gpu": str, "cc": str, "layout": str, "dtype": str, "precision": str, "dim": int,
                "nq_bucket": int, "lq_bucket": int, "ld_bucket": int, "nb_bucket": int}
    db["winners"].create(
        {**key_cols, "config": str, "time_ms": float, "baseline_ms": float, "speedup": float,
         "near_best": str, "trials": int, "seed": int, "template_hash": str, "created_at": str},
        pk=tuple(k for k in key_cols if k != "cc"),
    )
    db["trials"].create(
        {"id": int, **key_cols, "study": str, "number": int, "config": str, "config_key": str,
         "status": str, "time_ms": float, "message": str, "template_hash": str, "created_at": str},
        pk="id",
    )
    db["trials"].create_index(["gpu", "layout", "dtype", "dim", "status"])


def _m2_provenance(db: sqlite_utils.Database) -> None:
    # Version 2: every winner records the device limits and the software it was tuned with.
    for name, kind in (("sm_count", int), ("smem_limit", int), ("triton_version", str),
                       ("torch_version", str), ("package_version", str)):
        db["winners"].add_column(name, kind)
    db["winners"].create_index(["gpu", "layout", "dtype", "dim"], if_not_exists=True)
    db["winners"].create_index(["cc", "layout", "dtype", "dim"], if_not_exists=True)


def _m3_docs(db: sqlite_utils.Database) -> None:
    # Version 3: the bucket says whether its docs fill their padded length ("full") or
    # carry lengths or masks ("ragged"): the two prefer different tiles. Rows tuned
    # before say "" (not recorded); lookups take them for either.
    for table in ("winners", "trials"):
        if "docs" not in db[table].columns_dict:
            db[table].add_column("docs", str, not_null_default="")
    key = [k for k in WINNER_KEY if k not in ("codes", "op")]  # the key of version 3 (codes and op came later)
    if db["winners"].pks != key:
        db["winners"].transform(pk=key)


def _m4_kernel_hash(db: sqlite_utils.Database) -> None:
    # Version 4: a winner records the hash of the kernels it timed (codegen.kernel_hash),
    # so it stays valid across template edits that leave its kernels unchanged. Rows
    # stored before say "" and are judged by their template hash.
    if "kernel_hash" not in db["winners"].columns_dict:
        db["winners"].add_column("kernel_hash", str, not_null_default="")


def _m5_space_hash(db: sqlite_utils.Database) -> None:
    # Version 5: a winner records the hash of the search space it was found in
    # (tuner.space_hash), so a run with --refresh tunes again the buckets found before the
    # space grew. Rows stored before say "" (an older space).
    if "space_hash" not in db["winners"].columns_dict:
        db["winners"].add_column("space_hash", str, not_null_default="")


def _m6_space_sizes(db: sqlite_utils.Database) -> None:
    # Version 6: a winner records the sizes and mask kinds its bucket was tuned on, and its
    # space hash becomes the hash of that bucket's candidates (tuner.candidates_hash):
    # a space change that leaves a bucket's candidates as they were leaves it current.
    # Rows stored before say "" and keep the hash of the whole space.
    if "space_sizes" not in db["winners"].columns_dict:
        db["winners"].add_column("space_sizes", str, not_null_default="")


def _m7_cut(db: sqlite_utils.Database) -> None:
    # Version 7: a winner says whether the run's time budget stopped its study before the
    # trial target (1), so that a run with --resume or --refresh finishes that bucket.
    # Rows stored before say 0.
    if "cut" not in db["winners"].columns_dict:
        db["winners"].add_column("cut", int, not_null_default=0)


def _m8_codes(db: sqlite_utils.Database) -> None:
    # Version 8: the bucket says how the docs (and the query) are stored: "none" (float
    # docs, every row stored before), "int8" / "fp8" (quantized docs) or "int8xint8" /
    # "fp8xfp8" (the query quantized too). It joins the winners' key.
    for table in ("winners", "trials"):
        if "codes" not in db[table].columns_dict:
            db[table].add_column("codes", str, not_null_default="none")
    key = [k for k in WINNER_KEY if k != "op"]  # the key of version 8 (op came in version 9)
    if db["winners"].pks != key:
        db["winners"].transform(pk=key)


def _m9_op(db: sqlite_utils.Database) -> None:
    # Version 9: the kernel a row tunes: "fwd" (the scores, every row stored before) or
    # "bwd" (the backward's winners kernel, whose config has tiles, warps and stages
    # only). It joins the winners' key.
    for table in ("winners", "trials"):
        if "op" not in db[table].columns_dict:
            db[table].add_column("op", str, not_null_default="fwd")
    if db["winners"].pks != list(WINNER_KEY):
        db["winners"].transform(pk=list(WINNER_KEY))


MIGRATIONS: tuple[tuple[str, Callable[[sqlite_utils.Database], None]], ...] = (
    ("0001_initial", _m1_initial),
    ("0002_provenance", _m2_provenance),
    ("0003_docs", _m3_docs),
    ("0004_kernel_hash", _m4_kernel_hash),
    ("0005_space_hash", _m5_space_hash),
    ("0006_space_sizes", _m6_space_sizes),
    ("0007_cut", _m7_cut),
    ("0008_codes", _m8_codes),
    ("0009_op", _m9_op),
)
SCHEMA_VERSION = len(MIGRATIONS)


def version(db: sqlite_utils.Database) -> int:
    return db.execute("PRAGMA user_version").fetchone()[0]


@contextlib.contextmanager
def write_transaction(db: sqlite_utils.Database) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` (the write lock, waited for) ... ``COMMIT``, or ``ROLLBACK`` on an
    error: what is read inside stays true until the commit."""
    conn = db.conn
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if conn.in_transaction:
        conn.execute("COMMIT")


def _checked_version(db: sqlite_utils.Database, where: str = "database") -> int:
    current = version(db)
    if current > SCHEMA_VERSION:
        raise SchemaError(
            f"{where}: schema version {current} is newer than this package's {SCHEMA_VERSION}; "
            "upgrade maxsim-forge to read it"
        )
    if current < SCHEMA_VERSION and db.table_names() and "winners" not in db.table_names():
        raise SchemaError(f"{where}: not a maxsim-forge database (tables: {', '.join(db.table_names())})")
    return current


def migrate(db: sqlite_utils.Database, *, target: int = SCHEMA_VERSION, where: str = "database") -> int:
    """Apply the missing migrations in order; return the resulting version.

    Each step takes the write lock first and reads the version again inside it: a
    process that waited for another one's migration finds it done."""
    current = _checked_version(db, where)
    while current < target:
        with write_transaction(db):
            current = _checked_version(db, where)
            if current >= target:
                break
            name, step = MIGRATIONS[current]
            step(db)
            current += 1
            db.execute(f"PRAGMA user_version = {current}")
            db["migrations"].insert({"number": current, "name": name}, pk="number", replace=True)
    return version(db)


def _uri(path: Path, *, immutable: bool) -> str:
    flags = "mode=ro&immutable=1" if immutable else "mode=ro"
    return f"file:{urllib.parse.quote(str(path.absolute()))}?{flags}"


def _locked(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorname", "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or \
        "locked" in str(exc)


def _cannot_share(exc: sqlite3.Error) -> bool:
    """A WAL database whose folder this process cannot write (its -shm cannot be made)."""
    return getattr(exc, "sqlite_errorname", "").startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN"))


def _open_read_only(path: Path, *, immutable: bool, wait_s: float) -> sqlite_utils.Database:
    conn = sqlite3.connect(_uri(path, immutable=immutable), uri=True, timeout=wait_s, check_same_thread=False)
    db = sqlite_utils.Database(conn)
    try:
        current = version(db)
        if current < SCHEMA_VERSION and "winners" not in db.table_names():
            raise SchemaError(f"{path}: not a maxsim-forge database")
        if current > SCHEMA_VERSION:
            raise SchemaError(f"{path}: schema version {current} is newer than this package's {SCHEMA_VERSION}; "
                              "upgrade maxsim-forge to read it")
    except BaseException:
        conn.close()
        raise
    return db


def _check_path(path: Path) -> None:
    if path.is_dir():
        raise TunedDBError(f"{path} is a folder, not a database file; give a file such as {path / 'tuned.db'}")


def open_db(path, *, read_only: bool = False, immutable: bool = False,
            wait_s: float | None = None) -> sqlite_utils.Database:
    """Open (and, unless read-only, create and migrate) a tuned database.

    Read-only opens check the version and never write: no file is created, migrated or
    switched to WAL. A WAL database in a folder this process cannot write is read
    ``immutable`` (without the write-ahead log's unmerged pages). ``immutable`` (shipped
    databases, in a possibly read-only folder) takes no locks. A writer is waited for
    ``wait_s`` seconds (default :data:`READ_WAIT_S` to read, :data:`WRITE_WAIT_S` to write).

    Raises :class:`SchemaError` for a newer schema or a file that is not ours (or not
    SQLite), :class:`LockedError` when a writer held it past the wait, and
    :class:`TunedDBError` for a folder, a missing file (read-only) or one that cannot be
    written; each names the file.
    """
    path = Path(path)
    _check_path(path)
    if read_only:
        if not path.exists():
            raise TunedDBError(f"no tuned database at {path}")
        return _with_errors(path, lambda: _read_only(path, immutable, READ_WAIT_S if wait_s is None else wait_s))
    return _with_errors(path, lambda: _writable(path, WRITE_WAIT_S if wait_s is None else wait_s))


def _read_only(path: Path, immutable: bool, wait_s: float) -> sqlite_utils.Database:
    try:
        return _open_read_only(path, immutable=immutable, wait_s=wait_s)
    except sqlite3.OperationalError as exc:
        if immutable or not _cannot_share(exc):
            raise
    return _open_read_only(path, immutable=True, wait_s=wait_s)


def _check_writable(path: Path) -> None:
    """Say so before SQLite does (its words vary): a file, or its folder, this process
    cannot write (a database beside its journal or WAL needs both)."""
    folder = path.parent if str(path.parent) else Path(".")
    for what, target in (("the file", path), ("its folder", folder)):
        if target.exists() and not os.access(target, os.W_OK):
            raise TunedDBError(f"{path} cannot be written ({what} is read-only); give a database file you can write")


def _writable(path: Path, wait_s: float) -> sqlite_utils.Database:
    _check_writable(path)
    db = sqlite_utils.Database(sqlite3.connect(str(path), timeout=wait_s, check_same_thread=False))
    try:
        db.execute(f"PRAGMA busy_timeout = {int(wait_s * 1000)}")
        _enable_wal(db, wait_s)
        migrate(db, where=str(path))
        with write_transaction(db):  # the file can be written: say so now, not at the first winner
            pass
    except BaseException:
        db.conn.close()
        raise
    return db


def _enable_wal(db: sqlite_utils.Database, wait_s: float) -> None:
    """WAL mode, retried while another process holds the lock (changing the journal mode
    does not wait by itself)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            db.enable_wal()
            return
        except sqlite3.OperationalError as exc:
            if not _locked(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _with_errors(path: Path, open_it: Callable[[], sqlite_utils.Database]) -> sqlite_utils.Database:
    """sqlite3's errors as this package's, each naming the file."""
    try:
        return open_it()
    except TunedDBError:
        raise
    except sqlite3.Error as exc:
        raise as_tuned_db_error(path, exc) from None


def as_tuned_db_error(path, exc: sqlite3.Error) -> TunedDBError:
    """An sqlite3 error met on ``path``, as the error this package raises for it."""
    text = str(exc)
    if _locked(exc):
        return LockedError(f"{path} is locked by another process ({text}); try again when it is done")
    if "readonly" in text or getattr(exc, "sqlite_errorname", "").startswith("SQLITE_READONLY"):
        return TunedDBError(f"{path} cannot be written ({text}); give a database file you can write")
    if isinstance(exc, sqlite3.DatabaseError) and "not a database" in text:
        return SchemaError(f"{path} is not a maxsim-forge database ({text})")
    return TunedDBError(f"{path} cannot be used ({text})")
