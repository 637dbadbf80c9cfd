"""Reading and writing winners and trials; JSON export/import; merging databases."""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import sqlite_utils

from .._keys import BucketKey
from ._schema import WINNER_KEY, open_db

SHIPPED_DIR = Path(__file__).parent / "data"
EXPORT_FORMAT = "maxsim-forge-db"


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


class TunedDB:
    """A writable tuned database (the user's, or one a tune run fills)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = open_db(str(self.path))

    # ---- writes
    def add_trial(self, key: BucketKey, *, study: str, number: int, config: dict, config_key: str,
                  status: str, time_ms: float | None, message: str, template_hash: str) -> None:
        with self.db.conn:
            self.db["trials"].insert({
                **key.as_row(), "study": study, "number": number, "config": json.dumps(config, sort_keys=True),
                "config_key": config_key, "status": status, "time_ms": time_ms, "message": message[:4000],
                "template_hash": template_hash, "created_at": now(),
            })

    def put_winner(self, key: BucketKey, row: dict) -> None:
        data = {**key.as_row(), **row}
        for name in ("config", "near_best"):
            if not isinstance(data.get(name), str):
                data[name] = json.dumps(data.get(name), sort_keys=True)
        data.setdefault("created_at", now())
        with self.db.conn:
            self.db["winners"].upsert(data, pk=WINNER_KEY, alter=False)

    # ---- reads
    def winner(self, key: BucketKey) -> dict | None:
        rows = list(self.db["winners"].rows_where(
            " and ".join(f"{c} = ?" for c in WINNER_KEY), [getattr(key, c) for c in WINNER_KEY]))
        return decode(rows[0]) if rows else None

    def winners(self, **filters) -> list[dict]:
        return read_winners(self.db, **filters)

    def trials(self, **filters) -> list[dict]:
        where, args = _where(filters)
        return list(self.db["trials"].rows_where(where, args, order_by="id"))


def decode(row: dict) -> dict:
    out = dict(row)
    for name in ("config", "near_best"):
        if isinstance(out.get(name), str):
            out[name] = json.loads(out[name])
    return out


def _where(filters: dict) -> tuple[str | None, list]:
    items = [(k, v) for k, v in filters.items() if v is not None]
    if not items:
        return None, []
    return " and ".join(f"{k} = ?" for k, _ in items), [v for _, v in items]


def read_winners(db: sqlite_utils.Database, **filters) -> list[dict]:
    if "winners" not in db.table_names():
        return []
    where, args = _where(filters)
    return [decode(r) for r in db["winners"].rows_where(where, args, order_by="gpu, layout, dtype, dim")]


# ---- moving results between machines
def export_json(db: TunedDB, *, trials: bool = False, **filters) -> dict:
    doc = {"format": EXPORT_FORMAT, "version": 1, "exported_at": now(), "winners": db.winners(**filters)}
    if trials:
        doc["trials"] = db.trials(**filters)
    return doc


def import_json(db: TunedDB, doc: dict) -> int:
    """Merge an export into ``db`` (faster winner per key); returns winners taken."""
    if doc.get("format") != EXPORT_FORMAT:
        raise ValueError(f"not a maxsim-forge export (format {doc.get('format')!r}, expected {EXPORT_FORMAT!r})")
    return merge_rows(db, doc.get("winners", []))


def merge_rows(db: TunedDB, rows: Iterable[dict]) -> int:
    taken = 0
    for row in rows:
        key = BucketKey.from_row(row)
        mine = db.winner(key)
        if mine is None or (row.get("time_ms") is not None and (mine.get("time_ms") is None or row["time_ms"] < mine["time_ms"])):
            data = {k: v for k, v in row.items() if k not in BucketKey.__dataclass_fields__}
            if mine is not None and data.get("baseline_ms") is None and mine.get("baseline_ms"):
                # The torch baseline of the same bucket on the same GPU still holds.
                data["baseline_ms"] = mine["baseline_ms"]
                data["speedup"] = mine["baseline_ms"] / data["time_ms"]
            db.put_winner(key, data)
            taken += 1
    return taken


def merge_db(db: TunedDB, other_path: str | Path, *, prepare: Callable[[dict], dict] | None = None) -> int:
    """Merge another database's winners into ``db``, keeping the faster winner per key;
    ``prepare`` maps each row first."""
    other = open_db(str(other_path), read_only=True)
    rows = read_winners(other)
    return merge_rows(db, map(prepare, rows) if prepare else rows)


def ship(sources: Iterable[str | Path], out: str | Path, *, prepare: Callable[[dict], dict] | None = None) -> int:
    """Write a database fit to ship in the package: the faster winner per key of
    ``sources`` (each row mapped by ``prepare`` first), no trials, one file (no WAL)
    that opens read-only anywhere."""
    out = Path(out)
    if out.exists():
        out.unlink()
    db = TunedDB(out)
    taken = 0
    for src in sources:
        taken += merge_db(db, src, prepare=prepare)
    with db.db.conn:
        db.db.execute("DELETE FROM trials")
    db.db.execute("PRAGMA journal_mode = DELETE")
    db.db.execute("VACUUM")
    db.db.conn.close()
    return taken
