"""Set-up the hardening guards share: database rows, processes, one-line errors, and the
fixtures that make them (imported by name where they are used)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import sqlite3
import tempfile
from pathlib import Path

import pytest
import torch

from maxsim_forge._keys import gpu_info
from maxsim_forge.codegen import KernelConfig, kernel_hash, template_hash
from maxsim_forge.tuned_db import BucketKey, TunedDB, _schema

from _helpers import CFG_A
from conftest import DEVICE, randn


# ---- shared set-up of the database, process and command-line guards


def _key(*, gpu=None, nb=4, ld=64, lq=32, dim=128, layout="padded", docs="full") -> BucketKey:
    g = gpu_info(torch.device(DEVICE))
    return BucketKey(gpu=gpu or g.name, cc=g.cc, layout=layout, dtype="fp16", precision="native", dim=dim,
                     nq_bucket=1, lq_bucket=lq, nb_bucket=nb, ld_bucket=ld, docs=docs)


def _row(cfg: KernelConfig, *, time_ms=1.0, stale=False, **extra) -> dict:
    """A winner's values: current (its kernel hash is today's) unless ``stale``."""
    khash = "f" * 16 if stale else kernel_hash("padded", "fp16", 128, "native", cfg)
    return {"config": cfg.to_dict(), "time_ms": time_ms, "baseline_ms": 2.0, "speedup": 2.0 / time_ms,
            "near_best": [], "trials": 3, "seed": 0, "template_hash": template_hash(), "kernel_hash": khash,
            **extra}


def _put(path: Path, key: BucketKey, row: dict) -> None:
    """Store one winner and close the file (no connection left to hold a lock or a WAL)."""
    with TunedDB(path) as db:
        db.put_winner(key, row)


def _call():
    return randn(32, 128), randn(3, 40, 128)  # buckets: lq 32, ld 64, nb 4


def _rollback_journal(path: Path) -> None:
    """Leave ``path`` in rollback-journal mode, as shipped files are."""
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode = DELETE")
    con.close()


def _unprivileged(fn, *args):
    """``fn(*args)`` in a forked child that cannot write what only root may (it drops to
    nobody when this runs as root, where mode bits bind nobody); returns its result."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no return from here
        os.close(read)
        signal.alarm(60)
        try:
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            out = ("ok", fn(*args))
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            out = ("error", f"{type(exc).__name__}: {exc}")
        with os.fdopen(write, "wb") as fh:
            fh.write(pickle.dumps(out))
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    status, value = pickle.loads(data)
    assert status == "ok", value
    return value


@pytest.fixture
def shared_dir():
    """A folder another user may read (pytest's own are private to this one)."""
    path = Path(tempfile.mkdtemp(prefix="maxsim-forge-test-"))
    path.chmod(0o755)
    yield path
    for root, dirs, _ in os.walk(path):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
    path.chmod(0o755)
    shutil.rmtree(path)


# ---- finding 8: every command-line mistake ends in one "Error:" line, never a traceback

@pytest.fixture
def files(tmp_path, monkeypatch):
    """A good database, a corrupt one, one of a newer schema, one a writer holds, a
    shapes file, a JSON export, a folder, a plain file; waits for a held database cut short."""
    good = tmp_path / "good.db"
    _put(good, _key(), _row(CFG_A))
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a database" * 100)
    newer = tmp_path / "newer.db"
    with TunedDB(newer) as db:
        db.db.execute("PRAGMA user_version = 99")
    locked = tmp_path / "locked.db"
    _put(locked, _key(), _row(CFG_A))
    _rollback_journal(locked)
    holder = sqlite3.connect(locked, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    monkeypatch.setattr(_schema, "READ_WAIT_S", 0.2)
    monkeypatch.setattr(_schema, "WRITE_WAIT_S", 0.2)
    shapes = tmp_path / "shapes.json"
    shapes.write_text(json.dumps([{"layout": "padded", "dtype": "fp16", "dim": 32, "lq": 8, "ld": 16, "nb": 3}]))
    export = tmp_path / "export.json"
    export.write_text(json.dumps({"format": "maxsim-forge-db", "version": 1,
                                  "winners": [{**_key().as_row(), **_row(CFG_A)}]}))
    (tmp_path / "folder").mkdir()
    (tmp_path / "plain").write_text("x")
    yield {"good": good, "corrupt": corrupt, "newer": newer, "locked": locked, "shapes": shapes,
           "export": export, "tmp": tmp_path}
    holder.rollback()
    holder.close()


