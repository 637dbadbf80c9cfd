"""Tuning a fleet (maxsim_forge/tuner/_fleet.py): workers sharing their studies through a
real PostgreSQL server, one of them killed mid-trial, and the winners gathered; the same
rules on a SQLite storage where no server is needed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import _postgres
from maxsim_forge.tuned_db import TunedDB
from maxsim_forge.tuner import _fleet, make_storage

BUCKETS = [
    {"layout": "padded", "dtype": "fp16", "dim": 32, "lq": 8, "nb": 3, "ld": 20, "d_mask": "lengths", "name": "f1"},
    {"layout": "padded", "dtype": "fp16", "dim": 32, "lq": 4, "nb": 3, "ld": 12, "name": "f2"},
    {"layout": "allpairs", "dtype": "fp16", "dim": 32, "nq": 2, "lq": 4, "nb": 3, "ld": 16, "name": "f3"},
    {"layout": "pairs", "dtype": "fp16", "dim": 32, "lq": 4, "nb": 3, "ld": 16, "name": "f4"},
]


@pytest.fixture(scope="module")
def postgres():
    url, stop = _postgres.start()
    yield url
    stop()


def _worker(tmp: Path, name: str, storage: str, trials: int) -> subprocess.Popen:
    env = {**os.environ, "TRITON_INTERPRET": "1", "MAXSIM_FORGE_CACHE": str(tmp / "kernels"),
           "MAXSIM_FORGE_DB": str(tmp / "none.db")}
    cmd = [sys.executable, "-m", "maxsim_forge", "tune", "--shapes", str(tmp / "buckets.json"), "--db",
           str(tmp / f"{name}.db"), "--storage", storage, "--trials", str(trials), "--heartbeat", "1", "--quiet",
           "--workers", "1"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _studies(storage) -> list[optuna.Study]:
    return [optuna.load_study(study_name=s.study_name, storage=storage)
            for s in optuna.get_all_study_summaries(storage)]


def _running_of(storage, pid: int) -> bool:
    me = f"{socket.gethostname()}:{pid}"
    return any(t.user_attrs.get("worker") == me for st in _studies(storage)
               for t in st.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def test_three_workers_share_studies_and_survive_a_killed_one(postgres, tmp_path):
    url = _postgres.fresh_database(postgres, "fleet")
    (tmp_path / "buckets.json").write_text(json.dumps(BUCKETS))
    storage = make_storage(url)
    first = _worker(tmp_path, "w0", url, trials=6)
    deadline = time.monotonic() + 240
    while not _running_of(storage, first.pid):  # w0 is inside a trial
        assert first.poll() is None, first.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "worker 0 never started a trial"
        time.sleep(0.05)
    others = [_worker(tmp_path, f"w{i}", url, trials=6) for i in (1, 2)]
    os.kill(first.pid, signal.SIGKILL)  # mid-trial: its trial stays "running" until its heartbeat goes stale
    first.wait(timeout=30)
    for proc in others:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-4000:]

    # Gathered: every bucket once, the fastest of the workers' winners.
    merged = tmp_path / "fleet.db"
    parts = [p for p in (tmp_path / f"w{i}.db" for i in range(3)) if p.exists()]
    from click.testing import CliRunner

    from maxsim_forge.cli import main

    result = CliRunner().invoke(main, ["db", "merge", *map(str, parts), "--db", str(merged)])
    assert result.exit_code == 0, result.output
    rows = TunedDB(merged).winners()
    labels = sorted((r["layout"], r["lq_bucket"], r["ld_bucket"], r["nq_bucket"]) for r in rows)
    assert len(rows) == len(BUCKETS) == len(set(labels))
    for row in rows:
        times = [w["time_ms"] for p in parts for w in TunedDB(p).winners()
                 if (w["layout"], w["lq_bucket"], w["ld_bucket"], w["nq_bucket"]) ==
                 (row["layout"], row["lq_bucket"], row["ld_bucket"], row["nq_bucket"])]
        assert row["time_ms"] == min(times)

    studies = _studies(storage)
    assert len(studies) == len(BUCKETS)
    for study in studies:
        assert study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) == [], "a trial stuck as running"
        assert study.user_attrs.get("committed_by")
    # The killed worker's trial: failed once its heartbeat went stale, and retried.
    retried = [t for st in studies for t in _fleet.retried(st)]
    assert retried, "no retried trial in the study history"
    failed = {st.study_name: {t.number for t in st.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
              for st in studies}
    for st in studies:
        for t in _fleet.retried(st):
            assert t.system_attrs["failed_trial"] in failed[st.study_name]
            assert t.state in (TrialState.COMPLETE, TrialState.PRUNED)


def test_postgres_storage_beats_and_retries(postgres):
    storage = make_storage(_postgres.fresh_database(postgres, "beats"))
    study = optuna.create_study(study_name="s", storage=storage)
    assert _fleet.beats(study)
    trial = study.ask({"x": optuna.distributions.CategoricalDistribution([1, 2])})
    with _fleet.heartbeat(study, [trial]):
        pass
    study.tell(trial, 1.0)
    assert study.trials[0].state == TrialState.COMPLETE


def test_a_worker_skips_buckets_another_committed_and_joins_unfinished_ones(tmp_path, monkeypatch):
    """The same rules on a SQLite storage (no server): a second worker finds the studies
    another one committed and tunes nothing; a study left with a dead worker's running
    trial has that trial failed, once its heartbeat is stale, and retried."""
    from maxsim_forge._keys import INTERPRETER
    from maxsim_forge.tuner import Bucket, tune
    from maxsim_forge.tuner._study import BucketTuner, TuneOptions, study_name

    monkeypatch.setenv("MAXSIM_FORGE_HEARTBEAT_S", "1")
    buckets = [Bucket(**b) for b in BUCKETS[:2]]
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    me = _fleet.worker_id()
    first = tune(buckets, db_path=tmp_path / "a.db", trials=3, storage_url=url, progress=False)
    assert all(r.config is not None for r in first.results)
    monkeypatch.setattr(_fleet, "worker_id", lambda: "elsewhere:1")
    again = tune(buckets, db_path=tmp_path / "b.db", trials=3, storage_url=url, progress=False)
    assert [r.why for r in again.results] == [f"tuned by {me}"] * 2
    assert TunedDB(tmp_path / "b.db").winners() == []

    # A study whose only worker died inside a trial.
    dead = Bucket(**BUCKETS[2])
    key = BucketTuner(dead.tiny(), TunedDB(tmp_path / "c.db"), INTERPRETER, TuneOptions(device="cpu")).key
    storage = make_storage(url)
    study = optuna.create_study(study_name=study_name(INTERPRETER, key), storage=storage, direction="minimize")
    trial = study.ask()  # dead before it drew its config
    trial.set_user_attr("worker", "dead:1")
    storage.record_heartbeat(trial._trial_id)
    time.sleep(_fleet.GRACE_FACTOR * 1 + 1.5)  # its heartbeat goes stale
    late = tune([dead], db_path=tmp_path / "c.db", trials=3, storage_url=url, progress=False)
    assert late.results[0].config is not None  # joined and finished
    study = optuna.load_study(study_name=study.study_name, storage=storage)
    assert study.trials[trial.number].state == TrialState.FAIL
    retry = _fleet.retried(study)
    assert [t.system_attrs["failed_trial"] for t in retry] == [trial.number]
    assert retry[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) == []


def test_postgres_without_its_driver_says_what_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("psycopg", "psycopg2") else real(name, *a))
    with pytest.raises(ValueError, match=r"pip install 'maxsim-forge\[fleet\]'"):
        _fleet.rdb_storage("postgresql://u@host/db")


def test_heartbeat_setting_is_checked(monkeypatch):
    monkeypatch.setenv("MAXSIM_FORGE_HEARTBEAT_S", "soon")
    with pytest.raises(ValueError, match="MAXSIM_FORGE_HEARTBEAT_S='soon'"):
        _fleet.heartbeat_s()
    monkeypatch.setenv("MAXSIM_FORGE_HEARTBEAT_S", "5")
    assert _fleet.heartbeat_s() == 5
