"""Findings 6 and 7: a valid database is read (read-only folder, a writer holding it); read-only commands write nothing."""

from __future__ import annotations

import sqlite3
import stat
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import maxsim_forge as mf
from maxsim_forge.cli import main
from maxsim_forge.reference import maxsim_reference
from maxsim_forge.runtime import Lookup, reset
from maxsim_forge.runtime import _lookup
from maxsim_forge.tuned_db import TunedDB

from conftest import assert_scores

from _helpers import CFG_A
from _helpers import one_error as _one_error
from _guards import shared_dir  # noqa: F401  (fixtures)
from _guards import _call, _key, _put, _rollback_journal, _row, _unprivileged


# ---- finding 6: a valid database is read, in a read-only folder or held by a writer for a moment

def _load_rows(path: str) -> tuple[int, list[str]]:
    lookup = Lookup(user_path=Path(path), shipped_paths=[]).load()
    return sum(len(v) for v in lookup.exact.values()), lookup.reports


def test_a_wal_database_in_a_read_only_folder_is_read(shared_dir):
    folder = shared_dir / "data"
    folder.mkdir()
    path = folder / "user.db"
    _put(path, _key(), _row(CFG_A))  # WAL mode; closing leaves no -wal, no -shm
    path.chmod(0o644)
    assert sorted(p.name for p in folder.iterdir()) == ["user.db"]
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    rows, reports = _unprivileged(_load_rows, str(path))
    assert (rows, reports) == (1, [])
    shown = _unprivileged(lambda: CliRunner().invoke(main, ["db", "show", "--db", str(path)]).output)
    assert "bq32-bdoc16" in shown, shown


def test_a_database_a_writer_holds_is_read_after_a_short_wait_or_at_a_later_lookup(tmp_path, monkeypatch,
                                                                                    isolated_lookup):
    q, d = _call()
    path = tmp_path / "user.db"
    _put(path, _key(), _row(CFG_A))
    _rollback_journal(path)
    writer = sqlite3.connect(path, check_same_thread=False)
    writer.execute("BEGIN EXCLUSIVE")  # readers wait, as during a commit
    # Freed within the wait: read at once.
    threading.Timer(0.1, writer.rollback).start()
    rows, reports = _load_rows(str(path))
    assert (rows, reports) == (1, [])
    # Held past it: the lookup goes on after a bounded wait, and reads it at a later lookup.
    writer.execute("BEGIN EXCLUSIVE")
    monkeypatch.setattr(_lookup, "RETRY_S", 0.0)
    lookup = Lookup(user_path=path, shipped_paths=[])
    t0 = time.monotonic()
    lookup.load()
    assert time.monotonic() - t0 < 2.0, "a held database stalls the lookup"
    assert lookup.pending and [r for r in lookup.reports if "held by a writer" in r]
    reset(lookup)
    assert mf.explain(q, d).source == "heuristic"
    writer.rollback()
    writer.close()
    dec = mf.explain(q, d)
    assert (dec.source, dec.config) == ("user-db", CFG_A.to_dict())
    assert_scores(mf.maxsim(q, d), maxsim_reference(q, d), 1e-5, "read late")


# ---- finding 7: read-only commands open read-only, create nothing, switch nothing to WAL

READ_COMMANDS = [
    ["db", "show"], ["db", "export", "--out", "{out}/e.json"], ["export", "--format", "json", "--out", "{out}/f.json"],
    ["export", "--format", "vllm", "--out", "{out}/vllm"], ["db", "verify"],
]


@pytest.mark.parametrize("command", READ_COMMANDS, ids=lambda c: " ".join(c[:3]))
def test_read_only_commands_never_write_their_database(tmp_path, command):
    data = tmp_path / "data"
    data.mkdir()
    path = data / "small.db"
    _put(path, _key(), _row(CFG_A))
    _rollback_journal(path)
    before = path.read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    args = [a.format(out=out) for a in command]
    result = CliRunner().invoke(main, [*args, "--db", str(path)])
    assert result.exit_code == 0, result.output
    assert path.read_bytes() == before, "the database was written"
    assert sorted(p.name for p in data.iterdir()) == ["small.db"], "a journal or WAL was left beside it"
    missing = data / "typo.db"
    result = CliRunner().invoke(main, [*args, "--db", str(missing)])
    _one_error(result, 2, "--db", f"no tuned database at {missing}")
    assert not missing.exists()




# ---- a command that fails leaves every database as it was

def test_ship_onto_one_of_its_sources_is_refused_and_the_source_kept(tmp_path):
    src = tmp_path / "run.db"
    _put(src, _key(), _row(CFG_A))
    before = src.read_bytes()
    result = CliRunner().invoke(main, ["db", "ship", str(src), "--out", str(src)])
    _one_error(result, 2, "--out", "is one of the SOURCES")
    assert src.read_bytes() == before
    from maxsim_forge.tuned_db import ship

    with pytest.raises(ValueError, match="is one of the sources"):
        ship([src], tmp_path / "." / "run.db")


def test_a_failed_ship_leaves_the_database_it_would_replace(tmp_path):
    src, out, garbage = tmp_path / "run.db", tmp_path / "shipped.db", tmp_path / "garbage.db"
    _put(src, _key(), _row(CFG_A))
    assert CliRunner().invoke(main, ["db", "ship", str(src), "--out", str(out)]).exit_code == 0
    before = out.read_bytes()
    garbage.write_bytes(b"not a database at all" * 100)
    result = CliRunner().invoke(main, ["db", "ship", str(src), str(garbage), "--out", str(out)])
    _one_error(result, 1, "garbage.db")
    assert out.read_bytes() == before
    assert not [p.name for p in tmp_path.iterdir() if "shipped" in p.name and p.name != "shipped.db"]  # no part left


@pytest.mark.parametrize("command", [
    ["db", "merge", "{good}", "{garbage}"], ["import", "--format", "json", "{bad_json}"],
    ["db", "import", "{bad_json}"], ["import", "--format", "vllm", "{bad_folder}"],
], ids=lambda c: " ".join(c[:2]))
def test_a_failed_merge_or_import_creates_no_database(tmp_path, command):
    """Every source is read and checked before the target is opened: a bad one (after a
    good one, for merge) stores nothing and makes no database."""
    good, garbage, bad_json, bad_folder = (tmp_path / "good.db", tmp_path / "garbage.db", tmp_path / "bad.json",
                                           tmp_path / "vllm")
    _put(good, _key(nb=8), _row(CFG_A))
    garbage.write_bytes(b"not a database at all" * 100)
    bad_json.write_text('{"format": "maxsim-forge-db", "version": 1, "winners": [{"gpu": "X"}]}')
    bad_folder.mkdir()
    (bad_folder / "op=maxsim,dim=128,device_name=X,dtype=fp16.json").write_text("{not json")
    args = [a.format(good=good, garbage=garbage, bad_json=bad_json, bad_folder=bad_folder) for a in command]
    target = tmp_path / "new.db"
    result = CliRunner().invoke(main, [*args, "--db", str(target)])
    assert result.exit_code == 1 and "Traceback" not in result.output and "took" not in result.output, result.output
    assert not any(p.name.startswith("new.db") for p in tmp_path.iterdir()), "a database was left behind"
    _put(target, _key(), _row(CFG_A))  # an existing database stays, with its rows
    result = CliRunner().invoke(main, [*args, "--db", str(target)])
    assert result.exit_code == 1 and target.exists() and len(TunedDB(target).winners()) == 1, result.output
