"""One bucket's study (tuner/_study.py): a study cut by the time budget, failures stored
and never winning, the timed sizes and the seeds, and what the trial budget counts."""

from __future__ import annotations

import json
from dataclasses import replace

import optuna
import pytest
import torch

from maxsim_forge._keys import INTERPRETER
from maxsim_forge.codegen import KernelConfig
from maxsim_forge.tuned_db import BucketKey, TunedDB
from maxsim_forge.tuner import Bucket, summary_rows, tune, tune_on_device
from maxsim_forge.tuner import _compile, _verify

from _helpers import TINY


def test_a_bucket_cut_by_the_time_budget_is_finished_by_the_next_resume(tmp_path, monkeypatch):
    import time
    import types

    from maxsim_forge.tuner import _study

    # The budget runs out after the study's second batch: its winner is stored, marked cut.
    checks = []

    def monotonic():
        checks.append(1)
        return time.monotonic() + (1e9 if len(checks) > 2 else 0.0)

    monkeypatch.setattr(_study, "time", types.SimpleNamespace(monotonic=monotonic))
    db_path = tmp_path / "t.db"
    report = tune(TINY[:1], db_path=db_path, trials=6, time_budget_s=3600, progress=False, workers=1)
    (cut,) = report.results
    assert cut.cut and cut.config is not None and 0 < cut.trials < 6
    assert summary_rows(report)[0][5] == f"{cut.trials} (cut)"
    (row,) = TunedDB(db_path).winners()
    assert row["cut"] == 1 and row["trials"] == cut.trials
    monkeypatch.undo()
    # --resume and --refresh tune it again; then it is kept.
    for flag in ("resume", "refresh"):
        if flag == "refresh":
            TunedDB(db_path).put_winner(BucketKey.from_row(row), {**row, "cut": 1})
        again = tune(TINY[:1], db_path=db_path, trials=6, progress=False, workers=1, **{flag: True})
        (done,) = again.results
        assert not done.skipped and not done.cut and done.trials == 6, flag
        assert TunedDB(db_path).winners()[0]["cut"] == 0
    kept = tune(TINY[:1], db_path=db_path, trials=6, progress=False, workers=1, resume=True)
    assert [r.why for r in kept.results] == ["kept"]


def test_forced_failures_are_stored_and_never_win(tmp_path, monkeypatch):
    real_compile = _compile.compile_one
    real_load = _verify.load_variant

    def compile_one(job):
        if job.config.num_warps == 2:
            return _compile.COMPILE_FAILED, "forced compile failure"
        return real_compile(job)

    class Wrong:
        def __init__(self, module):
            self.module = module

        def launch(self, *args, **kwargs):
            return self.module.launch(*args, **kwargs).add_(1.0)

    def load_variant(spec, cfg, **kw):
        module = real_load(spec, cfg, **kw)
        return Wrong(module) if cfg.num_stages == 2 else module

    monkeypatch.setattr(_compile, "compile_one", compile_one)
    monkeypatch.setattr(_verify, "load_variant", load_variant)  # where candidates are checked
    db_path = tmp_path / "tuned.db"
    # workers=1: compile in this process, where the patches apply.
    tune_on_device(TINY[:1], db_path=db_path, trials=16, seed=3, progress=False, workers=1)
    db = TunedDB(db_path)
    statuses = {t["status"] for t in db.trials()}
    assert {"compile_failed", "mismatch", "ok"} <= statuses, statuses
    for t in db.trials(status="compile_failed"):
        assert json.loads(t["config"])["num_warps"] == 2 and t["message"] == "forced compile failure"
    for t in db.trials(status="mismatch"):
        assert json.loads(t["config"])["num_stages"] == 2 and "relative error" in t["message"]
    (winner,) = db.winners()
    assert winner["config"]["num_warps"] != 2 and winner["config"]["num_stages"] != 2
    assert all(c["num_warps"] != 2 and c["num_stages"] != 2 for c in winner["near_best"])


def test_candidates_are_timed_across_the_bucket_and_seeded_by_family_winners(tmp_path, monkeypatch):
    from maxsim_forge.tuner import _study

    gpu = INTERPRETER if not torch.cuda.is_available() else None
    small = Bucket(layout="padded", dtype="fp16", dim=32, lq=8, nb=16, ld=20, d_mask="lengths", name="spread")
    tune([small], db_path=tmp_path / "t.db", trials=2, progress=False)
    db = TunedDB(tmp_path / "t.db")
    (first,) = db.winners()
    tuner = _study.BucketTuner(replace(small, nb=64), db, gpu or _gpu_info(), _study.TuneOptions(device=_device()))
    # 64 docs: bucket 64 spans 33 to 64 docs; the low end is timed too, scaled to 64.
    sizes = [(p.launch_kwargs["nb"], f) for p, f in tuner.timed]
    assert sizes == [(64, 1.0), (33, 64 / 33)]
    assert tuner.timed[1][0].d.shape[0] == 33
    timed = []
    monkeypatch.setattr(_study, "time_fn", lambda fn, device: timed.append(fn) or _Timing(2.0))
    assert tuner._time(KernelConfig(block_q=16, block_d=16, block_k=32)) == pytest.approx(2.0 * (64 / 33) ** 0.5)
    assert len(timed) == 2
    monkeypatch.undo()
    # A study's seeds include the straight-line twin of each one-tile loop seed.
    loop = KernelConfig(block_q=16, block_d=16, block_k=32, num_warps=2, num_stages=2, q_mode="loop")
    monkeypatch.setattr(_study, "default_config", lambda *a, **k: loop)
    study_tuner = _study.BucketTuner(replace(small, lq=8), db, gpu or _gpu_info(), _study.TuneOptions(device=_device()))
    enqueued = []
    monkeypatch.setattr(optuna.Study, "enqueue_trial", lambda self, params, **k: enqueued.append(params))
    monkeypatch.setattr(_study, "spent", lambda study: 10**6)  # seed, then stop before any trial
    monkeypatch.setattr(_study.BucketTuner, "_commit", lambda self, study, name, **kw: None)
    study_tuner.run()
    assert replace(loop, q_mode="tile").to_dict() in enqueued and loop.to_dict() in enqueued
    # Docs with lengths end mid-tile: each seed's one-masked-loop twin is tried too.
    for cfg in (loop, replace(loop, q_mode="tile")):
        assert replace(cfg, masked_loop=True).to_dict() in enqueued
    # Folded queries over padded docs: each fold seed's persistent twin is tried too.
    fold = KernelConfig(block_q=32, block_d=16, block_k=32, num_warps=2, num_stages=2, q_mode="fold")
    monkeypatch.setattr(_study, "default_config", lambda *a, **k: fold)
    multi = Bucket(layout="allpairs", dtype="fp16", dim=32, nq=3, lq=8, nb=16, ld=20, name="multi")
    enqueued.clear()
    _study.BucketTuner(multi, db, gpu or _gpu_info(), _study.TuneOptions(device=_device())).run()
    assert fold.to_dict() in enqueued and replace(fold, q_mode="persist").to_dict() in enqueued
    # ... and each persistent seed's fold twin.
    monkeypatch.setattr(_study, "default_config", lambda *a, **k: replace(fold, q_mode="persist"))
    enqueued.clear()
    _study.BucketTuner(replace(multi, nb=17), db, gpu or _gpu_info(), _study.TuneOptions(device=_device())).run()
    assert fold.to_dict() in enqueued and replace(fold, q_mode="persist").to_dict() in enqueued
    monkeypatch.undo()
    # The winner of the bucket next door is among the seeds of this one's study.
    tuner.valid = {KernelConfig.from_dict(first["config"])}
    assert tuner._family_winners() == [KernelConfig.from_dict(first["config"])]
    tuner.valid = set()
    assert tuner._family_winners() == []


class _Timing:
    def __init__(self, ms):
        self.median_ms = ms


def _device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def _gpu_info():
    from maxsim_forge._keys import gpu_info

    return gpu_info(torch.device("cuda"))


def test_static_prunes_and_repeats_do_not_use_the_trial_budget(tmp_path, monkeypatch):
    from maxsim_forge.tuner import _study

    real = _study.check_static

    def prune_some(spec, cfg, sizes, **kw):  # a restriction that prunes about half the space
        return "test: one or two stages pruned" if cfg.num_stages <= 2 else real(spec, cfg, sizes, **kw)

    monkeypatch.setattr(_study, "check_static", prune_some)
    tune_on_device(TINY[:1], db_path=tmp_path / "t.db", trials=6, seed=5, progress=False, workers=1)
    trials = TunedDB(tmp_path / "t.db").trials()
    compiled = {t["config_key"] for t in trials if t["status"] != "pruned_static"}
    assert len(compiled) == 6, [(t["config_key"], t["status"]) for t in trials]
    assert any(t["status"] == "pruned_static" for t in trials), "the test needs a pruned proposal"
    (winner,) = TunedDB(tmp_path / "t.db").winners()
    assert winner["trials"] == 6
