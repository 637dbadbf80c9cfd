"""What a deployment serves (maxsim_forge/runtime/_record.py and tuner/_coverage.py): the
record a service writes, ``db coverage`` over it, and ``tune --from-record``."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

import maxsim_forge as mf
from maxsim_forge.cli import main
from maxsim_forge.runtime import Lookup, _record, reset
from maxsim_forge.tuner import buckets_from_record, served

from conftest import randn


@pytest.fixture
def recording(tmp_path, monkeypatch):
    path = tmp_path / "served.db"
    monkeypatch.setenv("MAXSIM_FORGE_RECORD", str(path))
    monkeypatch.setenv("MAXSIM_FORGE_COMPILE", "blocking")
    monkeypatch.setenv("MAXSIM_FORGE_DB", str(tmp_path / "absent.db"))
    reset(Lookup(user_path=tmp_path / "absent.db", shipped_paths=[]))
    yield path
    reset()  # flushes the record and reads the environment again


def _serve(n_padded: int, n_quant: int, n_pairs: int) -> None:
    q, d = randn(8, 32), randn(3, 20, 32)
    docs8 = mf.quantize(d, "int8")
    for _ in range(n_padded):
        mf.maxsim(q, d)
    for _ in range(n_quant):
        mf.maxsim(q, docs8)
    for _ in range(n_pairs):
        mf.maxsim_pairs([q], [d[0]])


def test_calls_are_counted_per_bucket_and_written_at_flush(recording):
    _serve(5, 2, 1)
    assert not recording.exists() or _record.read(recording) == []  # nothing written on the calls' path
    reset()
    items = served(recording)
    assert [(s.label, s.calls) for s in items] == [
        ("padded/fp16/dim32 nq1 lq8 nb4 ld32", 5), ("padded/fp16/dim32/int8 nq1 lq8 nb4 ld32", 2),
        ("pairs/fp16/dim32 nq1 lq8 nb1 ld32", 1)]
    assert all(s.sources == {"heuristic": s.calls} for s in items)
    row = items[0].row
    assert (row["lq"], row["nb"], row["ld"], row["q_mask"], row["d_mask"]) == (8, 3, 20, "none", "none")


def test_several_processes_add_to_one_record(recording, tmp_path):
    code = ("import torch, maxsim_forge as mf\n"
            "q, d = torch.randn(8, 32, dtype=torch.float16), torch.randn(3, 20, 32, dtype=torch.float16)\n"
            "for _ in range(3): mf.maxsim(q, d)\n")
    env = {**os.environ, "TRITON_INTERPRET": "0", "MAXSIM_FORGE_CACHE": str(tmp_path / "k")}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(3)]
    for p in procs:
        assert p.wait(timeout=300) == 0
    _serve(2, 0, 0)
    reset()
    (item,) = [s for s in served(recording) if s.label.startswith("padded/fp16/dim32 ")]
    assert item.calls == 3 * 3 + 2
    # The subprocesses scored on the CPU through torch (no interpreter): another source.
    assert item.sources == {"torch-fallback": 9, "heuristic": 2}


def test_the_record_is_written_at_an_interval_while_serving(recording, monkeypatch):
    monkeypatch.setenv("MAXSIM_FORGE_RECORD_INTERVAL", "0.2")
    reset(Lookup(user_path=recording.parent / "absent.db", shipped_paths=[]))
    _serve(3, 0, 0)
    deadline = time.monotonic() + 60  # a flush may come between the calls: the counts add up
    while not recording.exists() or sum(r["calls"] for r in _record.read(recording)) < 3:
        assert time.monotonic() < deadline, "the calls were not written within 60 s, the interval 0.2 s"
        time.sleep(0.1)
    assert [r["calls"] for r in _record.read(recording)] == [3]


def test_a_bad_interval_is_reported_and_never_stops_scoring(recording, monkeypatch, caplog):
    monkeypatch.setenv("MAXSIM_FORGE_RECORD_INTERVAL", "often")
    reset(Lookup(user_path=recording.parent / "absent.db", shipped_paths=[]))
    out = mf.maxsim(randn(8, 32), randn(3, 20, 32))
    assert out.shape == (3,)
    assert "MAXSIM_FORGE_RECORD_INTERVAL='often'" in caplog.text and _record.recorder().interval == 60.0


def test_a_record_that_cannot_be_written_says_what_it_keeps_and_what_it_loses(tmp_path, monkeypatch, caplog):
    folder = tmp_path / "served"
    folder.mkdir()
    monkeypatch.setenv("MAXSIM_FORGE_RECORD", str(folder))  # a folder: no SQLite file opens there
    reset(Lookup(user_path=tmp_path / "absent.db", shipped_paths=[]))
    _serve(2, 0, 0)
    _record.recorder().flush()  # while serving: kept for the next flush
    _serve(1, 0, 0)
    reset()  # the last flush: lost, and said so
    said = [r.getMessage() for r in caplog.records if "cannot write the record" in r.getMessage()]
    assert len(said) == 2 and "calls are kept and written later" in said[0], said
    assert "the 3 calls since the last flush are lost" in said[1], said


def test_a_forked_child_counts_its_own_calls_only(recording, monkeypatch):
    monkeypatch.setenv("MAXSIM_FORGE_RECORD_INTERVAL", "0.2")
    reset(Lookup(user_path=recording.parent / "absent.db", shipped_paths=[]))
    _serve(1, 0, 0)
    pid = os.fork()
    if pid == 0:  # the child: two calls, flushed by its own thread, then a hard exit (no atexit)
        code = 1
        try:
            _serve(2, 0, 0)
            deadline = time.monotonic() + 60  # a loaded machine may delay the thread's flush
            while code and time.monotonic() < deadline:
                time.sleep(0.1)
                try:  # the parent's thread may write its one call too: 2 or more is the child's
                    code = 0 if sum(r["calls"] for r in _record.read(recording)) >= 2 else 1
                except (FileNotFoundError, ValueError):  # not written yet, or its table not yet made
                    pass
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child's thread did not flush its calls within 60 s"
    reset()  # the parent's one call
    assert served(recording)[0].calls == 3


@pytest.mark.parametrize("fork_wait_s", (1.0, 0.2), ids=("the fork waits", "the write outlasts the wait"))
def test_a_fork_during_a_flush_never_leaves_the_child_a_record_it_cannot_write(recording, monkeypatch, fork_wait_s):
    """A fork while the parent's thread has the file open (mid-transaction) would hand the
    child SQLite's state of that open file, and the child's writes would wait on a lock
    nobody in it holds: the fork waits for the parent's write to end (here 0.5 s), or, past
    its wait, the child records nothing (and never blocks on the file)."""
    import threading

    real_connect, writing = _record.connect, threading.Event()

    class Slow:  # the parent's write holds its transaction open a while
        def __init__(self, conn):
            self.conn = conn

        def __enter__(self):
            return self.conn.__enter__()

        def __exit__(self, *exc):
            writing.set()
            time.sleep(0.5)
            return self.conn.__exit__(*exc)

        def executemany(self, *args):
            return self.conn.executemany(*args)

        def close(self):
            self.conn.close()

    monkeypatch.setattr(_record, "connect", lambda *a, **k: Slow(real_connect(*a, **k)))
    monkeypatch.setattr(_record, "_FORK_WAIT_S", fork_wait_s)
    waits = fork_wait_s > 0.5
    _serve(1, 0, 0)
    flush = threading.Thread(target=_record.recorder().flush)
    flush.start()
    assert writing.wait(30)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _record.connect = real_connect  # the child writes as usual
            _serve(2, 0, 0)
            _record.recorder().flush()
            if waits:
                code = 0 if sum(r["calls"] for r in _record.read(recording)) == 3 else 2
            else:  # off: nothing kept, nothing to write (and the file never opened)
                code = 0 if _record.recorder()._off and not _record.recorder()._routes else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    flush.join()
    assert os.waitstatus_to_exitcode(status) == 0
    monkeypatch.setattr(_record, "connect", real_connect)
    assert sum(r["calls"] for r in _record.read(recording)) == (3 if waits else 1)


def test_record_coverage_tune_from_record_end_to_end(recording, tmp_path, monkeypatch):
    _serve(5, 2, 1)
    reset()
    runner = CliRunner()
    result = runner.invoke(main, ["db", "coverage", "--record", str(recording)])
    assert result.exit_code == 0, result.output
    assert "padded/fp16/dim32/int8 nq1 lq8 nb4 ld32" in result.output and "heuristic  8      100.0%" in result.output
    assert "3 buckets served by something other than their own winner" in result.output
    buckets = buckets_from_record(recording)
    assert [b.label() for b in buckets] == [
        "recorded padded/fp16/dim32 nq1 lq8 nb4 ld32", "recorded padded/fp16/dim32/int8 nq1 lq8 nb4 ld32",
        "recorded pairs/fp16/dim32 nq1 lq8 nb1 ld32"]  # most called first
    tuned = tmp_path / "tuned.db"
    result = runner.invoke(main, ["tune", "--from-record", str(recording), "--db", str(tuned), "--trials", "2",
                                  "--quiet"])
    assert result.exit_code == 0, result.output
    # Served again with what was tuned: every bucket by its own winner.
    second = tmp_path / "second.db"
    monkeypatch.setenv("MAXSIM_FORGE_RECORD", str(second))
    reset(Lookup(user_path=tuned, shipped_paths=[]))
    _serve(1, 1, 1)
    reset()
    assert {s.label: s.kind for s in served(second)} == {s.label: "tuned here" for s in served(recording)}
    assert buckets_from_record(second) == []
    result = runner.invoke(main, ["tune", "--from-record", str(second), "--db", str(tuned)])
    assert result.exit_code == 0 and "nothing to tune" in result.output
    result = runner.invoke(main, ["tune", "--from-record", str(second), "--preset", "quick"])
    assert result.exit_code == 2 and "without --preset" in result.output


def test_coverage_of_a_missing_record_says_where_it_comes_from(tmp_path):
    result = CliRunner().invoke(main, ["db", "coverage", "--record", str(tmp_path / "none.db")])
    assert result.exit_code == 1 and "MAXSIM_FORGE_RECORD=" in result.output


def test_recording_off_costs_nothing_but_a_counter(tmp_path, monkeypatch):
    monkeypatch.delenv("MAXSIM_FORGE_RECORD", raising=False)
    reset(Lookup(user_path=tmp_path / "absent.db", shipped_paths=[]))
    try:
        _serve(2, 0, 0)
        assert _record.recorder() is None and not list(tmp_path.glob("*.db"))
    finally:
        reset()
