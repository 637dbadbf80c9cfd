"""The tuned database: SQLite through sqlite-utils, migrated, shipped read-only in data/."""

from __future__ import annotations

from ._schema import SCHEMA_VERSION, SchemaError, migrate, open_db
from ._store import (
    BucketKey,
    TunedDB,
    export_json,
    import_json,
    merge_db,
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
    "migrate",
    "open_db",
    "read_winners",
    "ship",
    "shipped_db_paths",
    "user_db_path",
]
