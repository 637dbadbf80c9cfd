"""Finding 4: concurrent tuning never loses the faster current winner, nor races the migration."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time

from click.testing import CliRunner

from maxsim_forge.cli import main
from maxsim_forge.tuned_db import BucketKey, TunedDB, merge_rows


from _helpers import CFG_A, CFG_B
from _guards import _key, _put, _row


# ---- finding 4: concurrent tuning never loses the faster current winner, nor races the migration

def _processes():
    """Worker processes that start quickly and share nothing with this one (no inherited
    SQLite connection or lock): forked from a server that imported the package once."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["maxsim_forge.tuned_db"])
    return ctx


def _offer_after(path: str, row: dict, ready) -> None:
    ready.set()
    merge_rows(TunedDB(path), [row])


def _open_fresh(path: str, start, nb: int, time_ms: float, out) -> None:
    try:
        start.wait(30)
        db = TunedDB(path)
        merge_rows(db, [{**_key(nb=nb).as_row(), **_row(CFG_A, time_ms=time_ms)}])
        out.put("ok")
    except Exception as exc:  # noqa: BLE001 - reported to the test
        out.put(f"{type(exc).__name__}: {exc}")


def test_a_write_compares_with_the_stored_winner_inside_its_transaction(tmp_path):
    # Another process's faster winner lands while this one's slower winner waits for the
    # write lock: the faster stays.
    path = tmp_path / "t.db"
    _put(path, _key(), _row(CFG_A, time_ms=20.0))
    ctx = _processes()
    ready = ctx.Event()
    writer = sqlite3.connect(path, check_same_thread=False)
    writer.execute("PRAGMA busy_timeout = 10000")
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE winners SET time_ms = 10.0")
    slower = {**_key().as_row(), **_row(CFG_A, time_ms=15.0)}
    proc = ctx.Process(target=_offer_after, args=(str(path), slower, ready))
    proc.start()
    try:
        assert ready.wait(60), "the writer process did not start"
        time.sleep(0.5)  # it has read the stored row and waits for the lock
        writer.commit()
        proc.join(60)
    finally:
        writer.close()
        if proc.is_alive():
            proc.kill()
    assert proc.exitcode == 0
    assert TunedDB(path).winner(_key())["time_ms"] == 10.0


def test_processes_opening_a_fresh_database_at_once_never_race_the_migration(tmp_path):
    ctx = _processes()
    n = 4
    start, out = ctx.Event(), ctx.Queue()
    path = tmp_path / "fresh.db"
    procs = [ctx.Process(target=_open_fresh, args=(str(path), start, 1 << i, 2.0 - i / 10, out)) for i in range(n)]
    for p in procs:
        p.start()
    start.set()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert results == ["ok"] * n, results
    assert len(TunedDB(path).winners()) == n


def test_a_tune_run_keeps_a_faster_stored_winner(tmp_path):
    from maxsim_forge.tuner import Bucket, tune

    bucket = Bucket(layout="padded", dtype="fp16", dim=32, lq=8, nb=3, ld=20)
    db_path = tmp_path / "t.db"
    tune([bucket], db_path=db_path, trials=2, progress=False, workers=1)
    db = TunedDB(db_path)
    (row,) = db.winners()
    key = BucketKey.from_row(row)
    db.put_winner(key, {**row, "time_ms": 1e-6})  # as if another process had found a faster one
    tune([bucket], db_path=db_path, trials=2, progress=False, workers=1)
    assert db.winner(key)["time_ms"] == 1e-6
    # A row cut short by the time budget, or found in an older search space, is replaced.
    for change in ({"cut": 1}, {"space_hash": "0" * 16}):
        db.put_winner(key, {**row, "time_ms": 1e-6, **change})
        tune([bucket], db_path=db_path, trials=2, progress=False, workers=1)
        assert db.winner(key)["time_ms"] > 1e-6, change


def test_db_merge_prefers_a_current_row_over_a_faster_stale_one(tmp_path):
    target, other = TunedDB(tmp_path / "target.db"), TunedDB(tmp_path / "other.db")
    target.put_winner(_key(), _row(CFG_A, time_ms=5.0))
    other.put_winner(_key(), _row(CFG_B, time_ms=1.0, stale=True))
    result = CliRunner().invoke(main, ["db", "merge", "--db", str(target.path), str(other.path)])
    assert result.exit_code == 0 and "took 0" in result.output, result.output
    assert target.winner(_key())["config"] == CFG_A.to_dict()
    other.put_winner(_key(), _row(CFG_B, time_ms=1.0))  # current and faster: taken
    result = CliRunner().invoke(main, ["db", "merge", "--db", str(target.path), str(other.path)])
    assert result.exit_code == 0 and "took 1" in result.output, result.output
    assert target.winner(_key())["config"] == CFG_B.to_dict()
    # A stale stored row gives way to a current one, even a slower one.
    target.put_winner(_key(), _row(CFG_A, time_ms=0.5, stale=True))
    assert merge_rows(target, [{**_key().as_row(), **_row(CFG_B, time_ms=3.0)}]) == 1


