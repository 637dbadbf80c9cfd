"""The tuned database: SQLite through sqlite-utils, migrated, shipped read-only in data/.

``BucketKey`` lives in ``maxsim_forge._keys`` beside the other shared keys; it is
re-exported here, where results are stored under it.
"""

from __future__ import annotations

from .._keys import BucketKey
from ._merge import EXPORT_FORMAT, db_rows, export_json, export_rows, import_json, is_source, merge_db, merge_rows, ship
from ._rows import EXPORT_VERSION, RowError, check_config, check_export, check_winner, row_label
from ._schema import (
    READ_WAIT_S, SCHEMA_VERSION, WRITE_WAIT_S, LockedError, SchemaError, TunedDBError, migrate, open_db,
)
from ._store import (
    TunedDB, better, load_winners, read_winners, scan_winners, shipped_db_paths, user_db_path,
)

__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_VERSION",
    "READ_WAIT_S",
    "SCHEMA_VERSION",
    "WRITE_WAIT_S",
    "BucketKey",
    "LockedError",
    "RowError",
    "SchemaError",
    "TunedDB",
    "TunedDBError",
    "better",
    "check_config",
    "check_export",
    "check_winner",
    "db_rows",
    "export_json",
    "export_rows",
    "import_json",
    "is_source",
    "load_winners",
    "merge_db",
    "merge_rows",
    "migrate",
    "open_db",
    "read_winners",
    "row_label",
    "scan_winners",
    "ship",
    "shipped_db_paths",
    "user_db_path",
]
