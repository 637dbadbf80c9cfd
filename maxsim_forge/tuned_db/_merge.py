"""Moving results between machines: JSON export and import, merging databases, shipping one."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from .._keys import BucketKey
from ._rows import EXPORT_FORMAT, EXPORT_VERSION, RowError, check_export, check_winner
from ._store import TunedDB, now, read_winners


def export_json(db: TunedDB, *, trials: bool = False, **filters) -> dict:
    doc = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "exported_at": now(), "winners": db.winners(**filters)}
    if trials:
        doc["trials"] = db.trials(**filters)
    return doc


def import_json(db: TunedDB, doc: dict, *, where: str = "export") -> int:
    """Merge an export into ``db`` (the better winner per key, :func:`merge_rows`); returns
    winners taken. Every row is checked first: a bad one (:class:`RowError`, naming
    ``where``, the row and the field) stores nothing."""
    return merge_rows(db, export_rows(doc, where=where))


def export_rows(doc: dict, *, where: str = "export") -> list[dict]:
    """The winners of an export, every one checked (:func:`check_export`, then
    :func:`check_winner` per row): a ``ValueError`` naming ``where`` before anything is stored."""
    return [check_winner(row, where=where, index=i) for i, row in enumerate(check_export(doc, where=where))]


def merge_rows(db: TunedDB, rows: Iterable[dict]) -> int:
    """Offer each row to ``db``: a current row over a stale one, then the faster
    (:meth:`TunedDB.offer_winner`); returns the rows taken."""
    taken = 0
    for row in rows:
        key = BucketKey.from_row(row)
        data = {k: v for k, v in row.items() if k not in BucketKey.__dataclass_fields__}
        taken += db.offer_winner(key, data)
    return taken


def merge_db(db: TunedDB, other_path: str | Path, *, prepare: Callable[[dict], dict] | None = None) -> int:
    """Merge another database's winners into ``db``: a current row over a stale one, then
    the faster, per key; ``prepare`` maps each row first. The other database is opened
    read-only (its errors name it); its bad rows are reported once and skipped."""
    return merge_rows(db, db_rows(other_path, prepare=prepare))


def db_rows(path: str | Path, *, prepare: Callable[[dict], dict] | None = None) -> list[dict]:
    """Another database's winners (its bad rows reported once and skipped), each mapped by
    ``prepare``; the file is opened read-only and its errors name it."""
    other = TunedDB(path, read_only=True)
    try:
        rows = other.winners()
    finally:
        other.close()
    return [prepare(r) for r in rows] if prepare else rows


def is_source(out: str | Path, sources: Iterable[str | Path]) -> bool:
    """Whether the file ``out`` is one of ``sources`` (by file, whatever the path's spelling)."""
    out = Path(out)
    return out.exists() and any(Path(src).exists() and os.path.samefile(src, out) for src in sources)


def ship(sources: Iterable[str | Path], out: str | Path, *, prepare: Callable[[dict], dict] | None = None) -> int:
    """Write a database fit to ship in the package: the better winner per key of
    ``sources`` (each row mapped by ``prepare`` first), no trials, one file (no WAL)
    that opens read-only anywhere. It is written beside ``out`` and moved onto it only
    when whole: a failure leaves ``out`` as it was. ``out`` may not be a source."""
    out, sources = Path(out), [Path(s) for s in sources]
    if is_source(out, sources):
        raise ValueError(f"{out} is one of the sources; write the shipped database to another file")
    # A folder of its own beside out (made here, 0700): no name another process could
    # have planted a link at.
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        part = work / out.name
        db = TunedDB(part)
        try:
            taken = sum(merge_db(db, src, prepare=prepare) for src in sources)
            with db.db.conn:
                db.db.execute("DELETE FROM trials")
            db.db.execute("PRAGMA journal_mode = DELETE")
            db.db.execute("VACUUM")
        finally:
            db.close()
        os.replace(part, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return taken


__all__ = ["EXPORT_FORMAT", "RowError", "db_rows", "export_json", "export_rows", "import_json", "is_source",
           "merge_db", "merge_rows", "read_winners", "ship"]
