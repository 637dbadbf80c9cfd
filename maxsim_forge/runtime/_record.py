"""``MAXSIM_FORGE_RECORD=path``: which buckets a deployment serves, how often, and from
which lookup source, so that ``db coverage`` can report it and ``tune --from-record`` can
tune exactly those.

Off the hot path: a route (one per bucket and spec) is registered once, when it is
decided; a warm call only adds 1 to its route's counter. The counts go to the record
file at exit and every ``MAXSIM_FORGE_RECORD_INTERVAL`` seconds (default 60) from a
background thread: each flush adds the calls since the last one to the file's rows in
one SQLite transaction, so several processes may write one file (a writer waits for
another). Under concurrent threads a counter may miss a call now and then: the counts
are for ranking buckets, not billing.

The file is an SQLite database with one table, ``served``: a row per GPU, bucket, mask
kinds and lookup source, with the calls, the exact sizes of the first call seen (what
``tune --from-record`` tunes on), the variant and when it was first and last seen.
"""

from __future__ import annotations

import atexit
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

log = logging.getLogger("maxsim_forge")

INTERVAL_S = 60.0
_KEY = ("gpu", "layout", "dtype", "precision", "dim", "codes", "nq_bucket", "lq_bucket", "nb_bucket", "ld_bucket",
        "docs", "q_mask", "d_mask", "source")
_COLUMNS = _KEY + ("calls", "nq", "lq", "nb", "ld", "variant", "first_seen", "last_seen")
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS served ("
    + ", ".join(f"{c} {'INTEGER' if c in ('dim', 'calls', 'nq', 'lq', 'nb', 'ld') or c.endswith('_bucket') else 'TEXT'}"
                for c in _COLUMNS)
    + f", PRIMARY KEY ({', '.join(_KEY)}))"
)
_WAIT_S = 30.0
# How long one attempt of a flush waits on another writer with the file open; the flush
# retries with it closed (up to _WAIT_S), so that a fork seldom waits on it (see _before_fork).
_ATTEMPT_S = 0.25
# Held while this process has the record file open (see _before_fork).
_open_lock = threading.Lock()
# The longest a fork waits for that; whether the fork in progress got the lock.
_FORK_WAIT_S = 1.0
_fork_held = False


def record_path() -> Path | None:
    raw = os.environ.get("MAXSIM_FORGE_RECORD", "").strip()
    return Path(raw) if raw else None


def _interval() -> float:
    """The flush interval; a bad setting is reported and the default taken (a record
    setting never stops scoring)."""
    raw = os.environ.get("MAXSIM_FORGE_RECORD_INTERVAL", "")
    try:
        value = float(raw) if raw else INTERVAL_S
    except ValueError:
        value = -1.0
    if not value > 0:
        log.warning("maxsim-forge: MAXSIM_FORGE_RECORD_INTERVAL=%r is no number of seconds > 0; "
                    "writing the record every %.0f s", raw, INTERVAL_S)
        return INTERVAL_S
    return value


def connect(path: Path, *, read_only: bool = False, timeout: float = _WAIT_S) -> sqlite3.Connection:
    """The record file, created with its table unless ``read_only``; ``timeout``: how long
    a statement waits on another process's lock."""
    if read_only:
        if not path.exists():
            raise FileNotFoundError(f"no record at {path} (set MAXSIM_FORGE_RECORD={path} where the service runs)")
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout)
    else:
        conn = sqlite3.connect(str(path), timeout=timeout)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(_SCHEMA)
    conn.row_factory = sqlite3.Row
    return conn


def read(path: str | Path) -> list[dict]:
    """Every row of a record file, most calls first."""
    with _open_lock:
        conn = connect(Path(path), read_only=True)
        try:
            rows = conn.execute("SELECT * FROM served ORDER BY calls DESC").fetchall()
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{path} is not a maxsim-forge record ({exc})") from None
        finally:
            conn.close()
    return [dict(r) for r in rows]


class Recorder:
    """The routes of this process and their calls, flushed to one record file."""

    def __init__(self, path: Path):
        self.path = path
        self.interval = _interval()
        self._routes: list[tuple[object, dict]] = []  # (route, its fixed row fields)
        self._flushed: dict[int, int] = {}
        self._lock = threading.Lock()  # the lists above: held briefly, never while writing
        self._write_lock = threading.Lock()  # one flush at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed = False
        self._off = False  # a child forked while its parent wrote: records nothing
        atexit.register(self._last_flush)

    def add(self, route, spec, sizes: dict) -> None:
        """A route decided for a call of ``spec`` with exact ``sizes``: recorded from now on."""
        key = route.key
        fields = {"gpu": key.gpu, "layout": key.layout, "dtype": key.dtype, "precision": key.precision,
                  "dim": key.dim, "codes": key.codes, "nq_bucket": key.nq_bucket, "lq_bucket": key.lq_bucket,
                  "nb_bucket": key.nb_bucket, "ld_bucket": key.ld_bucket, "docs": key.docs,
                  "q_mask": spec.q_mask, "d_mask": spec.d_mask, **{n: int(sizes[n]) for n in ("nq", "lq", "nb", "ld")}}
        with self._lock:
            if self._off:
                return
            self._routes.append((route, fields))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="maxsim-forge-record", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()

    def flush(self, *, last: bool = False) -> None:
        """Add the calls since the last flush to the record file (one transaction). The
        file is written without the lock that routing a new bucket takes: a writer that
        holds the file delays this flush only. A failed flush keeps the calls for the next
        one; the ``last`` (at exit, or the recorder's close) says what it loses."""
        with self._write_lock:
            now = time.strftime("%Y-%m-%dT%H:%M:%S")
            rows, taken = [], []
            with self._lock:
                for route, fields in self._routes:
                    count = route.calls  # read once: calls may go on meanwhile
                    calls = count - self._flushed.get(id(route), 0)
                    if calls > 0:
                        rows.append({**fields, "source": route.source, "calls": calls, "variant": route.variant,
                                     "first_seen": now, "last_seen": now})
                        self._flushed[id(route)] = count
                        taken.append((id(route), calls))
            if not rows:
                return
            try:
                self._write(rows)
            except (sqlite3.Error, OSError) as exc:
                with self._lock:  # these calls are written at the next flush
                    for key, calls in taken:
                        self._flushed[key] -= calls
                if last:
                    log.warning("maxsim-forge: cannot write the record %s (%s); the %d calls since the last "
                                "flush are lost", self.path, exc, sum(calls for _, calls in taken))
                elif not self._failed:
                    self._failed = True
                    log.warning("maxsim-forge: cannot write the record %s (%s); calls are kept and written later",
                                self.path, exc)

    def _last_flush(self) -> None:
        self.flush(last=True)

    def _write(self, rows: list[dict]) -> None:
        """One transaction, retried while another process holds the file: switching it to
        WAL does not wait on SQLite's busy timeout, so processes that flush at once (at
        exit, say) could otherwise lose their calls. Each attempt holds the file open for
        at most about ``_ATTEMPT_S`` and waits between attempts with it closed."""
        deadline = time.monotonic() + _WAIT_S
        while True:
            try:
                with _open_lock:
                    conn = connect(self.path, timeout=_ATTEMPT_S)
                    try:
                        with conn:  # one transaction: BEGIN ... COMMIT
                            conn.executemany(
                                f"INSERT INTO served ({', '.join(_COLUMNS)}) VALUES "
                                f"({', '.join(':' + c for c in _COLUMNS)}) ON CONFLICT ({', '.join(_KEY)}) DO UPDATE "
                                "SET calls = calls + excluded.calls, last_seen = excluded.last_seen, "
                                "variant = excluded.variant", rows)
                    finally:
                        conn.close()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        self.flush(last=True)
        atexit.unregister(self._last_flush)

    def after_fork_in_child(self, *, writing: bool) -> None:
        """A forked child (a server's worker) counts from here: what its parent served is
        the parent's to write, and the child needs a flush thread of its own. A child forked
        while its parent had the file open (``writing``) records nothing: SQLite's state of
        that open file came with it, and its own writes could wait on it for good."""
        self._lock, self._write_lock = threading.Lock(), threading.Lock()
        self._stop, self._thread = threading.Event(), None
        self._flushed = {id(route): route.calls for route, _ in self._routes}
        if writing:
            self._off, self._routes = True, []
            log.warning("maxsim-forge: forked while the record %s was being written; this process "
                        "records nothing", self.path)
            return
        if self._routes:
            self._thread = threading.Thread(target=self._loop, name="maxsim-forge-record", daemon=True)
            self._thread.start()


_recorder: Recorder | None = None
_recorder_lock = threading.Lock()


def _before_fork() -> None:
    """A fork waits until no thread of this process has the record file open (at most
    ``_FORK_WAIT_S``: a slow disk, or a fork from a signal handler while this very thread
    writes): SQLite's state of an open file (its locks, counted per process) would pass to
    the child, whose own writes to the file would then wait on locks nobody there holds."""
    global _fork_held
    _fork_held = _open_lock.acquire(timeout=_FORK_WAIT_S)


def _after_fork_in_parent() -> None:
    if _fork_held:
        _open_lock.release()


def _after_fork_in_child() -> None:
    global _recorder_lock, _open_lock
    _recorder_lock, _open_lock = threading.Lock(), threading.Lock()
    if _recorder is not None:
        _recorder.after_fork_in_child(writing=not _fork_held)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)


def recorder() -> Recorder | None:
    """This process's recorder where ``MAXSIM_FORGE_RECORD`` names a file, else None."""
    global _recorder
    path = record_path()
    if path is None:
        return None
    with _recorder_lock:
        if _recorder is None or _recorder.path != path:
            if _recorder is not None:
                _recorder.close()
            _recorder = Recorder(path)
        return _recorder


def stop() -> None:
    """Flush and forget the recorder (``reset()``: the environment is read again)."""
    global _recorder
    with _recorder_lock:
        if _recorder is not None:
            _recorder.close()
        _recorder = None


__all__ = ["INTERVAL_S", "Recorder", "connect", "read", "record_path", "recorder", "stop"]
