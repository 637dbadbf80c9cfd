"""The tuned database: SQLite through sqlite-utils, migrated, shipped read-only in data/.

``BucketKey`` lives in ``maxsim_forge._keys`` beside the other shared keys; it is
re-exported here, where results are stored under it.
"""

from __future__ import annotations

from .._keys import BucketKey
from ._schema import SCHEMA_VERSION, SchemaError, migrate, open_db
from ._store import (
    TunedDB,
    export_json,
    import_json,
    merge_db,
    merge_rows,
    read_winners,
    ship,
    shipped_db_paths,
    user_db_path,
)

__all__ = [
    "SCHEMA_VERSION",
    "BucketKey",
    "SchemaError",
    "TunedDB",
    "export_json",
    "import_json",
    "merge_db",
    "merge_rows",
    "migrate",
    "open_db",
    "read_winners",
    "ship",
    "shipped_db_paths",
    "user_db_path",
]
