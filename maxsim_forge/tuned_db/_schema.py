"""The schema, as named, ordered, transactional migrations; the version lives in the DB.

Migration N brings a database from version N - 1 to N. Each runs in one transaction
together with the version bump, so a database is always at some whole version.
A database newer than this package knows is refused, never rewritten.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import sqlite_utils

BUCKET_COLUMNS = ("layout", "dtype", "precision", "dim", "nq_bucket", "lq_bucket", "ld_bucket", "nb_bucket", "docs")
WINNER_KEY = ("gpu",) + BUCKET_COLUMNS


class SchemaError(RuntimeError):
    """A database this package cannot read: newer schema, or not ours."""


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
    if db["winners"].pks != list(WINNER_KEY):
        db["winners"].transform(pk=list(WINNER_KEY))


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


MIGRATIONS: tuple[tuple[str, Callable[[sqlite_utils.Database], None]], ...] = (
    ("0001_initial", _m1_initial),
    ("0002_provenance", _m2_provenance),
    ("0003_docs", _m3_docs),
    ("0004_kernel_hash", _m4_kernel_hash),
    ("0005_space_hash", _m5_space_hash),
    ("0006_space_sizes", _m6_space_sizes),
    ("0007_cut", _m7_cut),
)
SCHEMA_VERSION = len(MIGRATIONS)


def version(db: sqlite_utils.Database) -> int:
    return db.execute("PRAGMA user_version").fetchone()[0]


def migrate(db: sqlite_utils.Database, *, target: int = SCHEMA_VERSION) -> int:
    """Apply the missing migrations in order; return the resulting version."""
    current = version(db)
    if current > SCHEMA_VERSION:
        raise SchemaError(
            f"database schema version {current} is newer than this package's {SCHEMA_VERSION}; "
            "upgrade maxsim-forge to read it"
        )
    if current == 0 and db.table_names() and "winners" not in db.table_names():
        raise SchemaError(f"not a maxsim-forge database (tables: {', '.join(db.table_names())})")
    for number, (name, step) in enumerate(MIGRATIONS[current:target], start=current + 1):
        with db.conn:  # one transaction: the step and the version bump land together
            step(db)
            db.execute(f"PRAGMA user_version = {number}")
            db["migrations"].insert({"number": number, "name": name}, pk="number", replace=True)
    return version(db)


def open_db(path, *, read_only: bool = False, immutable: bool = False) -> sqlite_utils.Database:
    """Open (and, unless read-only, create and migrate) a tuned database.

    Read-only opens check the version and never write; they raise :class:`SchemaError`
    for a newer schema and ``sqlite3.DatabaseError`` for a file that is not SQLite.
    ``immutable`` (shipped databases, in a possibly read-only folder) takes no locks.
    """
    if read_only:
        flags = "mode=ro&immutable=1" if immutable else "mode=ro"
        conn = sqlite3.connect(f"file:{path}?{flags}", uri=True, check_same_thread=False)
        db = sqlite_utils.Database(conn)
        current = version(db)  # raises DatabaseError on a corrupt file
        if current > SCHEMA_VERSION:
            raise SchemaError(
                f"{path}: schema version {current} is newer than this package's {SCHEMA_VERSION}"
            )
        if current < SCHEMA_VERSION and "winners" not in db.table_names():
            raise SchemaError(f"{path}: not a maxsim-forge database")
        return db
    db = sqlite_utils.Database(path)
    db.execute("PRAGMA busy_timeout = 60000")  # several tuning processes may write at once
    db.enable_wal()
    migrate(db)
    return db
