"""Tuning runs (tuner/_run.py) end to end through the interpreter (or compiled on a GPU, on
shrunk buckets): resume and refresh, the time budget, shared journal studies, several GPUs."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp

import optuna
import pytest
import torch
from click.testing import CliRunner

from maxsim_forge._keys import INTERPRETER
from maxsim_forge.cli import main
from maxsim_forge.tuned_db import BucketKey, TunedDB
from maxsim_forge.tuner import in_current_space, make_storage, summary_rows, tune, tune_on_device
from maxsim_forge.tuner._study import spent

from _helpers import TINY


def test_tune_end_to_end_then_show_then_resume(tmp_path, monkeypatch):
    db_path = tmp_path / "tuned.db"
    report = tune(TINY, db_path=db_path, trials=5, seed=1, progress=False)
    assert [r.trials for r in report.results] == [5, 5]
    winners = TunedDB(db_path).winners()
    assert len(winners) == 2 and all(w["time_ms"] > 0 and w["baseline_ms"] > 0 for w in winners)
    assert {w["layout"] for w in winners} == {"padded", "allpairs"}
    assert all(w["template_hash"] and w["triton_version"] and w["trials"] == 5 for w in winners)

    result = CliRunner().invoke(main, ["db", "show", "--db", str(db_path)])
    assert result.exit_code == 0, result.output
    assert "padded" in result.output and "allpairs" in result.output

    n_trials = len(TunedDB(db_path).trials())
    # Finished buckets are skipped on their key alone: no data is made for them.
    from maxsim_forge.tuner import _study

    made = []
    real_synth = _study.synth
    monkeypatch.setattr(_study, "synth", lambda *a, **k: made.append(k["device"]) or real_synth(*a, **k))
    again = tune(TINY, db_path=db_path, trials=5, seed=1, resume=True, progress=False)
    assert all(r.skipped for r in again.results)
    assert [row[1] for row in summary_rows(again)] == ["(kept)", "(kept)"]
    assert len(TunedDB(db_path).trials()) == n_trials
    assert made == ["meta"] * len(TINY)


def test_time_budget_stops_between_buckets_and_says_which_were_not_reached(tmp_path):
    # The budget is spent before the first bucket's first trial: it is cut, the next
    # one not started, and neither is reported as failed.
    report = tune(TINY, db_path=tmp_path / "t.db", trials=2, time_budget_s=1e-6, progress=False)
    assert [r.skipped for r in report.results] == [True, True]
    assert [row[1] for row in summary_rows(report)] == ["(cut: time budget)", "(not reached: time budget)"]
    assert TunedDB(tmp_path / "t.db").winners() == []
    # The command says how to finish them.
    shapes = str(_shapes_file(tmp_path, TINY))
    for flag in ("--resume", "--refresh"):
        result = CliRunner().invoke(main, ["tune", "--shapes", shapes, "--trials", "2", "--time-budget", "1e-6",
                                           "--quiet", "--db", str(tmp_path / "t.db"), flag])
        assert result.exit_code == 0, result.output
        assert result.output.rstrip().endswith(
            f"2 buckets cut short or not reached by the time budget: run again with {flag} to finish."), result.output
    # With time left, every bucket is tuned, and nothing is left to finish.
    result = CliRunner().invoke(main, ["tune", "--shapes", shapes, "--trials", "2", "--quiet", "--db", str(tmp_path / "t.db")])
    assert result.exit_code == 0 and "run again" not in result.output, result.output
    report = tune(TINY, db_path=tmp_path / "t.db", trials=2, time_budget_s=3600, progress=False)
    assert all(r.config is not None and not r.skipped for r in report.results)


def _journal_worker(args):
    db_path, journal, seed = args
    tune_on_device(TINY[:1], db_path=db_path, trials=10, seed=seed, storage_url=f"journal:{journal}",
                   progress=False, workers=1)


def test_two_processes_share_one_journal_study(tmp_path):
    db_path, journal = tmp_path / "tuned.db", tmp_path / "study.journal"
    TunedDB(db_path)
    with mp.get_context("spawn").Pool(2) as pool:
        pool.map(_journal_worker, [(db_path, journal, 0), (db_path, journal, 1)])
    storage = make_storage(f"journal:{journal}")
    (summary,) = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()
    numbers = sorted(t.number for t in trials)
    assert numbers == list(range(len(trials))), "trial numbers lost or duplicated"
    states = optuna.trial.TrialState
    finished = [t for t in trials if t.state in (states.COMPLETE, states.PRUNED)]
    # The budget counts distinct configs compiled by both processes together (static
    # prunes and repeats are free); the last round of each may overshoot by one.
    assert 10 <= spent(optuna.load_study(study_name=summary.study_name, storage=storage)) <= 11 <= len(finished) + 1
    # Besides finished trials, only queued refinement proposals nobody asked for remain.
    assert all(t.state in (states.COMPLETE, states.PRUNED, states.WAITING) for t in trials)
    assert len(TunedDB(db_path).winners()) == 1


def test_two_gpu_workers_split_the_buckets(tmp_path):
    if torch.cuda.is_available() and torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs, or the interpreter")
    report = tune(TINY, db_path=tmp_path / "tuned.db", trials=3, gpus=2, progress=False)
    assert sorted(r.bucket.name for r in report.results) == ["tiny", "tiny-multi"]
    assert len({r.device for r in report.results}) == 2, [r.device for r in report.results]
    assert len(TunedDB(tmp_path / "tuned.db").winners()) == 2


def _candidates(bucket, row):
    # The hash of the bucket's candidates on the device the row was tuned on.
    from maxsim_forge._problems import synth
    from maxsim_forge.tuner import candidates_hash

    spec = synth(bucket.spec, bucket.sizes, device="meta", seed=0).prep.spec
    return candidates_hash(spec, bucket.sizes, sm_count=row["sm_count"], smem_limit=row["smem_limit"])


def test_refresh_tunes_again_the_buckets_found_in_an_older_search_space(tmp_path, monkeypatch):
    from maxsim_forge.tuner import _space, _study, space_hash

    db_path = tmp_path / "t.db"
    tune(TINY, db_path=db_path, trials=2, progress=False)
    db = TunedDB(db_path)
    # Each winner stores the hash of its bucket's candidates and what it was tuned on.
    rows = {w["layout"]: w for w in db.winners()}
    assert {k: w["space_hash"] for k, w in rows.items()} == {"padded": _candidates(TINY[0], rows["padded"]),
                                                             "allpairs": _candidates(TINY[1], rows["allpairs"])}
    assert json.loads(rows["allpairs"]["space_sizes"]) == {"q_mask": "none", "d_mask": "none", "nq": 3, "lq": 4,
                                                           "nb": 3, "ld": 16}
    older = rows["padded"]
    key = BucketKey.from_row(older)
    db.put_winner(key, {**{k: v for k, v in older.items() if k not in key.as_row()}, "space_hash": "0" * 16})
    shown = {line.split()[1]: line.split()[-1] for line in
             CliRunner().invoke(main, ["db", "show", "--db", str(db_path)]).output.splitlines()[2:]}
    assert shown == {"padded": "older", "allpairs": "current"}
    # --resume keeps both; --refresh tunes the older one again, its winner first among the seeds.
    assert all(r.skipped for r in tune(TINY, db_path=db_path, trials=2, resume=True, progress=False).results)
    enqueued = []
    real_enqueue = optuna.Study.enqueue_trial
    monkeypatch.setattr(optuna.Study, "enqueue_trial",
                        lambda self, params, **k: enqueued.append(params) or real_enqueue(self, params, **k))
    result = CliRunner().invoke(main, ["tune", "--shapes", str(_shapes_file(tmp_path, TINY)), "--trials", "2",
                                       "--refresh", "--quiet", "--db", str(db_path)])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.startswith("tiny")}
    assert "(kept)" in lines["tiny-multi"] and "(kept)" not in lines["tiny"], result.output
    assert enqueued[0] == older["config"]
    assert all(in_current_space(w) for w in TunedDB(db_path).winners())
    # A new space is a new study: a persistent storage does not resume the old one.
    assert _study.study_name(INTERPRETER, key).endswith("|" + space_hash())
    # A knob value that no candidate of a bucket can take leaves that bucket current; one
    # that adds candidates makes it older. Rows from before schema 6 compare the whole space.
    monkeypatch.setitem(_space.SPACE, "block_q", (*_space.SPACE["block_q"], 512))  # over validate's limit
    _space.candidates_hash.cache_clear()
    assert all(in_current_space(w) for w in TunedDB(db_path).winners())
    monkeypatch.setitem(_space.SPACE, "num_stages", (*_space.SPACE["num_stages"], 5))
    _space.candidates_hash.cache_clear()
    assert not any(in_current_space(w) for w in TunedDB(db_path).winners())
    legacy = {**rows["allpairs"], "space_sizes": "", "space_hash": space_hash()}
    assert in_current_space(legacy)
    monkeypatch.undo()
    _space.candidates_hash.cache_clear()


def _shapes_file(tmp_path, buckets):
    path = tmp_path / "shapes.json"
    path.write_text(json.dumps([dataclasses.asdict(b) for b in buckets]))
    return path


def test_tune_cli_quick_preset_in_interpreter_says_so(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("the interpreter message is for machines without CUDA")
    result = CliRunner().invoke(main, ["tune", "--preset", "quick", "--trials", "2", "--db", str(tmp_path / "t.db"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "interpreter" in result.output and "colbert" in result.output and "speedup" in result.output
    # It labels buckets as db show does, and says where it wrote.
    assert "colbert padded/fp16/dim64 nq1 lq8 nb4 ld32 ragged" in result.output
    assert f"winners written to {tmp_path / 't.db'} (the runtime reads it when MAXSIM_FORGE_DB names it)" in result.output
