"""Reading and writing winners and trials.

Every row read passes the schema (``_rows.check_winner``): a bad one is skipped and
reported once, the rest serves. Tuning and merging offer their winners
(:meth:`TunedDB.offer_winner`): inside one write transaction the stored row is read and
the better of the two kept (:func:`better`), so concurrent processes never lose the
faster current winner.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sqlite3
from pathlib import Path

import sqlite_utils

from .._keys import BucketKey
from ..codegen import is_current, private_folders
from ._rows import RowError, check_winner, report_once
from ._schema import WINNER_KEY, as_tuned_db_error, open_db, write_transaction

SHIPPED_DIR = Path(__file__).parent / "data"


def user_db_path() -> Path:
    """``MAXSIM_FORGE_DB``, else ``$XDG_CACHE_HOME/maxsim-forge/tuned.db``."""
    env = os.environ.get("MAXSIM_FORGE_DB")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "maxsim-forge" / "tuned.db"


def shipped_db_paths() -> list[Path]:
    return sorted(SHIPPED_DIR.glob("*.db"))


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def better(new: dict, old: dict | None, *, study: bool = False) -> bool:
    """Whether winner ``new`` should replace ``old`` of the same key: a row that runs the
    kernels it was timed with over a stale one; for a tuning study's row (``study``), one
    of a finished study over one cut short by the time budget, and one of the writer's
    search space over one found in another; then the faster. An equal time keeps ``old``."""
    if old is None:
        return True
    current = is_current(new)
    if current != is_current(old):
        return current
    if study:
        if bool(new.get("cut")) != bool(old.get("cut")):
            return not new.get("cut")
        if new.get("space_hash") != old.get("space_hash"):
            return True
    t_new, t_old = new.get("time_ms"), old.get("time_ms")
    return t_new is not None and (t_old is None or t_new < t_old)


class TunedDB:
    """A tuned database: writable (the user's, or one a tune run fills), or opened
    ``read_only`` for the commands that only read (never created, migrated or switched
    to WAL)."""

    def __init__(self, path: str | Path, *, read_only: bool = False, wait_s: float | None = None):
        self.path = Path(path)
        self.read_only = read_only
        if not read_only:
            private_folders(self.path.parent)
        self.db = open_db(str(self.path), read_only=read_only, wait_s=wait_s)

    def close(self) -> None:
        self.db.conn.close()

    def __enter__(self) -> TunedDB:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- writes
    def add_trial(self, key: BucketKey, *, study: str, number: int, config: dict, config_key: str,
                  status: str, time_ms: float | None, message: str, template_hash: str) -> None:
        with self.db.conn:
            self.db["trials"].insert({
                **key.as_row(), "study": study, "number": number, "config": json.dumps(config, sort_keys=True),
                "config_key": config_key, "status": status, "time_ms": time_ms, "message": message[:4000],
                "template_hash": template_hash, "created_at": now(),
            })

    def _checked(self, key: BucketKey, row: dict) -> dict:
        """The row under ``key``, checked against the schema (RowError otherwise), decoded."""
        return check_winner({**row, **key.as_row()}, where=str(self.path))

    def _upsert(self, data: dict) -> None:
        data = {**data, **{name: json.dumps(data.get(name), sort_keys=True) for name in ("config", "near_best")}}
        data.setdefault("created_at", now())
        self.db["winners"].upsert(data, pk=WINNER_KEY, alter=False)

    def put_winner(self, key: BucketKey, row: dict) -> None:
        """Store ``row`` under ``key``, replacing whatever is stored (a repair; tuning and
        merging go through :meth:`offer_winner`, which keeps the better row)."""
        data = self._checked(key, row)
        with write_transaction(self.db):
            self._upsert(data)

    def offer_winner(self, key: BucketKey, row: dict, *, study: bool = False) -> bool:
        """Store ``row`` under ``key`` unless the stored row is better (:func:`better`),
        compared inside the write transaction; returns whether it was stored. A row
        without a torch baseline keeps the stored one's (the same bucket on the same GPU)."""
        data = self._checked(key, row)
        with write_transaction(self.db):
            old = self.winner(key)
            if not better(data, old, study=study):
                return False
            if old is not None and data.get("baseline_ms") is None and old.get("baseline_ms") and data.get("time_ms"):
                data["baseline_ms"] = old["baseline_ms"]
                data["speedup"] = old["baseline_ms"] / data["time_ms"]
            self._upsert(data)
        return True

    # ---- reads
    def winner(self, key: BucketKey) -> dict | None:
        """The row stored under ``key``; None if there is none, or if it breaks the schema
        (reported once)."""
        rows = list(self.db["winners"].rows_where(
            " and ".join(f"{c} = ?" for c in WINNER_KEY), [getattr(key, c) for c in WINNER_KEY]))
        if not rows:
            return None
        try:
            return check_winner(rows[0], where=str(self.path))
        except RowError as exc:
            report_once(exc)
            return None

    def winners(self, **filters) -> list[dict]:
        return read_winners(self.db, where=str(self.path), **filters)

    def trials(self, **filters) -> list[dict]:
        where, args = _where(filters)
        return list(self.db["trials"].rows_where(where, args, order_by="id"))


def _where(filters: dict) -> tuple[str | None, list]:
    items = [(k, v) for k, v in filters.items() if v is not None]
    if not items:
        return None, []
    return " and ".join(f"{k} = ?" for k, _ in items), [v for _, v in items]


def scan_winners(db: sqlite_utils.Database, *, where: str = "database",
                 **filters) -> tuple[list[dict], list[RowError]]:
    """(the rows that pass the schema, decoded; the errors of those that do not), in order."""
    if "winners" not in db.table_names():
        return [], []
    query, args = _where(filters)
    good, bad = [], []
    for i, row in enumerate(db["winners"].rows_where(query, args, order_by="gpu, layout, dtype, dim")):
        try:
            good.append(check_winner(row, where=where, index=i))
        except RowError as exc:
            bad.append(exc)
    return good, bad


def read_winners(db: sqlite_utils.Database, *, where: str = "database", **filters) -> list[dict]:
    """The rows that pass the schema; each other row is reported once and skipped."""
    good, bad = scan_winners(db, where=where, **filters)
    for exc in bad:
        report_once(exc)
    return good


def load_winners(path: str | Path, *, immutable: bool = False,
                 wait_s: float | None = None) -> tuple[list[dict], list[RowError]]:
    """Open ``path`` read-only, read every winner, close: (good rows, bad rows' errors), as
    :func:`scan_winners`. Errors are this package's (``TunedDBError`` and its kinds), each
    naming the file; :class:`LockedError` where a writer held it past ``wait_s``."""
    db = open_db(str(path), read_only=True, immutable=immutable, wait_s=wait_s)
    try:
        return scan_winners(db, where=str(path))
    except sqlite3.Error as exc:
        raise as_tuned_db_error(path, exc) from None
    finally:
        db.conn.close()
