"""The tuner end to end through the interpreter (or compiled on a GPU, on shrunk buckets)."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
from dataclasses import replace

import optuna
import pytest
import torch
from click.testing import CliRunner

from maxsim_forge.cli import main
from maxsim_forge.codegen import KernelConfig, KernelSpec, is_current, kernel_hash, template_hash
from maxsim_forge.runtime import default_config
from maxsim_forge._keys import INTERPRETER
from maxsim_forge.tuned_db import BucketKey, TunedDB, open_db, read_winners
from maxsim_forge.tuned_db._schema import SCHEMA_VERSION, migrate, version
from maxsim_forge.tuner import (
    PRESETS,
    RESTRICTIONS,
    Bucket,
    check_static,
    in_current_space,
    make_storage,
    stale_winners,
    summary_rows,
    tune,
    tune_on_device,
)
from maxsim_forge.tuner import _compile, _verify
from maxsim_forge.tuner._study import spent

TINY = [Bucket(layout="padded", dtype="fp16", dim=32, lq=8, nb=3, ld=20, d_mask="lengths", name="tiny"),
        Bucket(layout="allpairs", dtype="bf16", dim=32, nq=3, lq=4, nb=3, ld=16, name="tiny-multi")]


def test_every_restriction_has_a_reason():
    assert len({r.name for r in RESTRICTIONS}) == len(RESTRICTIONS)
    assert all(r.reason and len(r.reason) > 20 for r in RESTRICTIONS)


@pytest.mark.parametrize("spec, sizes", [
    (KernelSpec("allpairs", "fp16", 128), dict(nq=16, lq=32, nb=1000, ld=300)),
    (KernelSpec("pairs", "bf16", 96), dict(nq=1, lq=32, nb=64, ld=300)),
    (KernelSpec("packed", "fp32", 320, "ieee"), dict(nq=3, lq=40, nb=5, ld=61)),
], ids=("allpairs", "pairs", "packed-fp32"))
def test_enumeration_matches_every_config_checked_one_by_one(spec, sizes, monkeypatch):
    # The space is walked knob by knob, each rule checked once its knobs are chosen: the
    # same configs, in the same order, as checking every config of the product.
    from maxsim_forge._problems import Sizes
    from maxsim_forge.tuner import _space
    from maxsim_forge.tuner._space import all_configs, valid_configs

    s = Sizes(**sizes)
    brute = [c for c in all_configs() if check_static(spec, c, s, sm_count=132, smem_limit=232_448) is None]
    assert valid_configs(spec, s, sm_count=132, smem_limit=232_448) == brute
    # A rule that reads a knob it does not declare fails loudly, never prunes by accident.
    wrong = replace(_space.RESTRICTIONS[0], knobs=("block_k",), allows=lambda spec, cfg, s, sms: cfg.num_warps > 0)
    monkeypatch.setattr(_space, "RESTRICTIONS", (wrong, *_space.RESTRICTIONS[1:]))
    with pytest.raises(AttributeError, match="num_warps"):
        valid_configs(spec, s, sm_count=132)


def test_deferred_row_max_only_for_tall_tiles_over_several_doc_tiles():
    from maxsim_forge._problems import Sizes

    spec, sizes = KernelSpec("padded", "fp16", 128), dict(sm_count=132, smem_limit=232_448)
    cfg = KernelConfig(block_q=128, block_d=64, block_k=128, num_warps=8, num_stages=3, q_mode="grid", defer_max=True)
    assert check_static(spec, cfg, Sizes(nq=1, lq=1024, nb=1000, ld=1024), **sizes) is None
    assert "defer_needs_doc_tiles" in check_static(spec, cfg, Sizes(nq=1, lq=1024, nb=1000, ld=64), **sizes)
    assert "defer_needs_doc_tiles" in check_static(spec, replace(cfg, block_q=32), Sizes(nq=1, lq=32, nb=1000, ld=1024),
                                                   **sizes)
    assert "defer_or_overlap" in check_static(spec, replace(cfg, overlap_max=True),
                                              Sizes(nq=1, lq=1024, nb=1000, ld=1024), **sizes)
    # The running max is a second score tile in the register estimate.
    big = KernelConfig(block_q=256, block_d=64, block_k=128, num_warps=8, num_stages=3, q_mode="grid")
    assert check_static(spec, big, Sizes(nq=1, lq=1024, nb=1000, ld=1024), **sizes) is None
    assert "registers" in check_static(spec, replace(big, defer_max=True), Sizes(nq=1, lq=1024, nb=1000, ld=1024),
                                       **sizes)


def test_persistent_grid_only_for_folded_queries_over_padded_docs():
    from maxsim_forge._problems import Sizes

    sizes = dict(sm_count=132, smem_limit=232_448)
    cfg = KernelConfig(block_q=256, block_d=64, block_k=128, num_warps=8, num_stages=3, q_mode="persist")
    many = Sizes(nq=16, lq=32, nb=1000, ld=300)
    assert check_static(KernelSpec("allpairs", "fp16", 128), cfg, many, **sizes) is None
    # 256 rows need the folded row set: 16 queries of 32 tokens, not one.
    assert "block_q_fits_rows" in check_static(KernelSpec("allpairs", "fp16", 128), cfg,
                                               Sizes(nq=1, lq=32, nb=1000, ld=300), **sizes)
    for other in (replace(cfg, masked_loop=True), replace(cfg, overlap_max=True)):
        assert "persist_for_folded_queries" in check_static(KernelSpec("allpairs", "fp16", 128), other, many, **sizes)
    assert "persist_for_folded_queries" in check_static(KernelSpec("packed", "fp16", 128), cfg, many, **sizes)


def test_one_masked_loop_only_where_a_doc_can_end_mid_tile():
    from maxsim_forge._problems import Sizes

    cfg = KernelConfig(block_q=32, block_d=64, block_k=128, q_mode="tile", masked_loop=True)
    sizes = dict(sm_count=132, smem_limit=232_448)
    assert "masked_loop_needs_a_partial_tile" in check_static(KernelSpec("padded", "fp16", 128), cfg,
                                                              Sizes(nq=1, lq=32, nb=1000, ld=256), **sizes)
    for spec, ld in ((KernelSpec("padded", "fp16", 128), 300), (KernelSpec("padded", "fp16", 128, d_mask="lengths"), 256),
                     (KernelSpec("packed", "fp16", 128), 256)):
        assert check_static(spec, cfg, Sizes(nq=1, lq=32, nb=1000, ld=ld), **sizes) is None, (spec, ld)
    # The heuristic's straight-line tiles take the masked loop exactly where docs can end mid-tile.
    for spec, ld, masked in ((KernelSpec("padded", "fp16", 128), 300, True), (KernelSpec("padded", "fp16", 128), 256, False),
                             (KernelSpec("padded", "fp16", 128, d_mask="lengths"), 256, True),
                             (KernelSpec("pairs", "bf16", 96), 128, True)):
        pick = default_config(spec, nq=1, lq=32, nb=1000, ld=ld)
        assert (pick.q_mode, pick.masked_loop) == ("tile", masked), (spec, ld, pick)
    assert not default_config(KernelSpec("padded", "fp16", 128), nq=1, lq=1024, nb=1000, ld=300).masked_loop


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_heuristic_default_passes_static_checks_for_every_preset_bucket(preset):
    from maxsim_forge._problems import Sizes

    for b in PRESETS[preset]:
        layout = "allpairs" if b.layout == "allpairs" and b.nq > 1 else b.layout
        spec = b.spec if layout == b.layout else b.spec.__class__(layout, b.dtype, b.dim)
        cfg = default_config(spec, nq=b.nq, lq=b.lq, nb=b.nb, ld=b.ld, sm_count=132)
        assert check_static(spec, cfg, b.sizes, sm_count=132, smem_limit=232_448) is None, (b, cfg)


@pytest.mark.parametrize("smem_limit", (232_448, 166_912, 101_376))  # H100, A100, Ada
@pytest.mark.parametrize("dtype", ("fp16", "fp32"))
def test_heuristic_default_fits_the_devices_shared_memory(smem_limit, dtype):
    from maxsim_forge.codegen import validate

    for dim in (32, 96, 128, 256, 384):
        for layout, nq, lq in (("padded", 1, 32), ("padded", 1, 300), ("padded", 1, 1024), ("allpairs", 16, 32)):
            spec = KernelSpec(layout, dtype, dim)
            cfg = default_config(spec, nq=nq, lq=lq, nb=1000, ld=1024, sm_count=132, smem_limit=smem_limit)
            validate(spec, cfg, smem_limit=smem_limit)  # raises ConfigError if it does not fit
    # Hopper keeps the 256-row tile for long half-precision queries.
    big = default_config(KernelSpec("padded", "fp16", 128), nq=1, lq=1024, nb=1000, ld=1024)
    assert (big.block_q, big.num_warps, big.q_mode) == (256, 8, "grid")
    # Shared queries over padded docs: the persistent grid, without a doc split even
    # where the docs are too few to fill the GPU; over packed docs, fold.
    for nq, nb in ((8, 1000), (16, 1000), (32, 3)):
        folded = default_config(KernelSpec("allpairs", "bf16", 128), nq=nq, lq=32, nb=nb, ld=300)
        assert (folded.block_q, folded.num_warps, folded.num_stages, folded.q_mode, folded.split_d) == (
            256, 8, 3, "persist", 1), (nq, nb, folded)
    packed = default_config(KernelSpec("packed", "bf16", 128), nq=16, lq=32, nb=1000, ld=300)
    assert (packed.block_q, packed.num_warps, packed.q_mode) == (256, 8, "fold")
    eight = default_config(KernelSpec("packed", "bf16", 128), nq=8, lq=32, nb=1000, ld=300)
    assert (eight.block_q, eight.q_mode) == (128, "fold")
    # A few shared queries: all their rows in one fold tile (each query's sum stored).
    for nq, block_q, stages in ((2, 64, 1), (3, 128, 3), (4, 128, 3)):
        few = default_config(KernelSpec("allpairs", "fp16", 128), nq=nq, lq=32, nb=1000, ld=300)
        assert (few.q_mode, few.block_q, few.num_stages) == ("fold", block_q, stages), (nq, few)
        assert few.block_q >= nq * 32
    # Many short queries: rows that fit one tile stay in it (the store takes 32 queries a
    # step); over packed docs, 65 to 128 rows take two tiles past 8 queries.
    cases = {
        "allpairs": ((8, 16, 128, 1), (16, 8, 128, 1), (128, 1, 128, 1), (4, 32, 128, 1),
                     (16, 4, 64, 1), (32, 2, 64, 1), (64, 1, 64, 1)),
        "packed": ((8, 16, 128, 1), (16, 8, 64, 2), (128, 1, 64, 2), (4, 32, 128, 1),
                   (16, 4, 64, 1), (32, 2, 64, 1), (64, 1, 64, 1)),
    }
    for layout, shapes in cases.items():
        for nq, lq, block_q, tiles in shapes:
            many = default_config(KernelSpec(layout, "fp16", 128), nq=nq, lq=lq, nb=4000, ld=300)
            assert (many.q_mode, many.block_q, -(-nq * lq // many.block_q)) == ("fold", block_q, tiles), (
                layout, nq, lq, many)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_bucket_has_a_key_of_its_own(preset):
    # Two buckets of a preset under one key would overwrite each other's winner.
    from maxsim_forge._keys import doc_fill

    keys = [(b.layout, b.dtype, b.precision, b.dim, b.sizes.bucketed(), doc_fill(b.spec)) for b in PRESETS[preset]]
    assert len(keys) == len(set(keys))
    if preset == "default":
        assert {"full", "ragged"} <= {k[-1] for k in keys if k[0] == "padded" and k[4].lq == 32}


def test_bucket_keys_from_shapes_alone_match_keys_from_data():
    from maxsim_forge._problems import synth
    from maxsim_forge._keys import INTERPRETER
    from maxsim_forge.runtime import bucket_key

    packed = [b for b in PRESETS["default"] if b.layout == "packed"][:1]
    for b in [b.tiny() for b in PRESETS["quick"] + packed]:
        keys = [bucket_key(synth(b.spec, b.sizes, device=dev, seed=3, skew=b.layout == "packed").prep, INTERPRETER)
                for dev in ("meta", "cpu")]
        assert keys[0] == keys[1], b


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


def test_previous_schema_version_migrates(tmp_path):
    import sqlite_utils

    path = tmp_path / "old.db"
    old = sqlite_utils.Database(path)
    migrate(old, target=1)
    assert version(old) == 1 and "sm_count" not in old["winners"].columns_dict
    old["winners"].insert({"gpu": "G", "cc": "9.0", "layout": "padded", "dtype": "fp16", "precision": "native",
                           "dim": 128, "nq_bucket": 1, "lq_bucket": 32, "ld_bucket": 512, "nb_bucket": 1024,
                           "config": json.dumps(KernelConfig().to_dict()), "time_ms": 0.1, "trials": 4})
    old.conn.close()
    db = TunedDB(path)
    assert version(db.db) == SCHEMA_VERSION
    assert "sm_count" in db.db["winners"].columns_dict
    (row,) = db.winners()
    assert row["config"] == KernelConfig().to_dict() and row["time_ms"] == 0.1
    assert row["cut"] == 0  # a row from before version 7 counts as a finished study
    # Rows from before the key recorded docs say "" and stay distinct from new rows.
    assert row["docs"] == "" and "docs" in db.db["trials"].columns_dict
    assert db.db["winners"].pks[-1] == "docs"
    old_key = BucketKey.from_row(row)
    assert old_key.docs == "" and old_key.label().endswith("nb1024 ld512 any-docs")
    db.put_winner(replace(old_key, docs="full"), {"config": json.dumps(KernelConfig().to_dict()), "time_ms": 0.2})
    assert sorted(w["docs"] for w in db.winners()) == ["", "full"]
    # Rows from before kernel hashes have none: they are judged by their template hash.
    assert [w["kernel_hash"] for w in db.winners()] == ["", ""]
    # ... and no search-space hash: an older space, as far as --refresh is concerned.
    assert [w["space_hash"] for w in db.winners()] == ["", ""]
    assert [w["space_sizes"] for w in db.winners()] == ["", ""]
    assert not any(is_current(w) for w in db.winners())
    db.put_winner(old_key, {**row, "template_hash": template_hash()})
    assert is_current(db.winner(old_key))


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


def test_winners_record_their_kernel_hash_and_ship_stamps_older_rows(tmp_path):
    src = tmp_path / "run.db"
    tune(TINY[:1], db_path=src, trials=2, progress=False)
    (w,) = TunedDB(src).winners()
    cfg = KernelConfig.from_dict(w["config"])
    assert w["kernel_hash"] == kernel_hash(w["layout"], w["dtype"], w["dim"], w["precision"], cfg)
    assert is_current(w) and not stale_winners([w])
    # A row stored before kernel hashes, of the current template, is stamped when shipped;
    # one of another template is shipped as it is, and stays stale.
    db = TunedDB(src)
    key = BucketKey.from_row(w)
    data = {k: v for k, v in w.items() if k not in key.as_row()}
    db.put_winner(key, {**data, "kernel_hash": ""})
    other = replace(key, nb_bucket=key.nb_bucket * 2)
    db.put_winner(other, {**data, "kernel_hash": "", "template_hash": "0" * 16})
    out = tmp_path / "shipped.db"
    result = CliRunner().invoke(main, ["db", "ship", str(src), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = {r["nb_bucket"]: r for r in read_winners(open_db(str(out), read_only=True))}
    assert rows[key.nb_bucket]["kernel_hash"] == w["kernel_hash"]
    assert rows[other.nb_bucket]["kernel_hash"] == "" and stale_winners(list(rows.values())) == [rows[other.nb_bucket]]
    shown = CliRunner().invoke(main, ["db", "show", "--db", str(out)]).output
    assert "stale" in shown and "yes" in shown


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "new.db"
    db = TunedDB(path)
    db.db.execute("PRAGMA user_version = 42")
    db.db.conn.commit()
    from maxsim_forge.tuned_db import SchemaError

    with pytest.raises(SchemaError, match="newer"):
        open_db(str(path))


def test_export_import_merge_keep_faster(tmp_path):
    runner = CliRunner()
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    tune(TINY[:1], db_path=a, trials=3, progress=False)
    out = tmp_path / "a.json"
    assert runner.invoke(main, ["db", "export", "--db", str(a), "--out", str(out)]).exit_code == 0
    doc = json.loads(out.read_text())
    assert doc["format"] == "maxsim-forge-db" and len(doc["winners"]) == 1
    result = runner.invoke(main, ["db", "import", "--db", str(b), str(out)])
    assert result.exit_code == 0 and "took 1" in result.output
    assert TunedDB(b).winners()[0]["config"] == TunedDB(a).winners()[0]["config"]
    # A slower copy does not replace; a faster one does.
    slow = dict(doc["winners"][0], time_ms=doc["winners"][0]["time_ms"] * 2, config={**doc["winners"][0]["config"], "num_stages": 1})
    fast = dict(slow, time_ms=doc["winners"][0]["time_ms"] / 2)
    c = tmp_path / "c.json"
    c.write_text(json.dumps({**doc, "winners": [slow]}))
    assert "took 0" in runner.invoke(main, ["db", "import", "--db", str(b), str(c)]).output
    other = TunedDB(tmp_path / "other.db")
    from maxsim_forge.tuned_db import import_json

    import_json(other, {**doc, "winners": [fast]})
    result = runner.invoke(main, ["db", "merge", "--db", str(b), str(other.path)])
    assert result.exit_code == 0 and "took 1" in result.output
    assert TunedDB(b).winners()[0]["config"]["num_stages"] == 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "other"}))
    result = runner.invoke(main, ["db", "import", "--db", str(b), str(bad)])
    assert result.exit_code == 1 and "not a maxsim-forge export" in result.output


def test_only_picks_buckets_by_label():
    from maxsim_forge.tuner import resolve

    picked = resolve("default", None, only=("colbert-full fp16 d96", "image-query bf16"))
    assert {(b.name, b.dtype) for b in picked} == {("colbert-full", "fp16"), ("image-query", "bf16")}
    assert {b.dim for b in picked if b.name == "colbert-full"} == {96} and len(picked) == 4
    assert [b.nb for b in resolve("default", None, ("bf16",), ("n16000",))] == [16000] * 10
    with pytest.raises(ValueError, match="matches no bucket; labels look like"):
        resolve("default", None, only=("no such bucket",))
    result = CliRunner().invoke(main, ["tune", "--preset", "default", "--only", "nope", "--db", "x.db"])
    assert result.exit_code == 1 and "only=['nope'] matches no bucket" in result.output


def test_tune_cli_quick_preset_in_interpreter_says_so(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("the interpreter message is for machines without CUDA")
    result = CliRunner().invoke(main, ["tune", "--preset", "quick", "--trials", "2", "--db", str(tmp_path / "t.db"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "interpreter" in result.output and "colbert" in result.output and "speedup" in result.output


def test_ship_then_verify_then_read_only_lookup(tmp_path):
    import os
    import stat

    from maxsim_forge.runtime import Lookup
    from maxsim_forge._keys import INTERPRETER, gpu_info
    from maxsim_forge.tuner import verify_winners

    src = tmp_path / "run.db"
    tune(TINY, db_path=src, trials=3, progress=False)
    folder = tmp_path / "data"
    folder.mkdir()
    shipped = folder / "GPU.db"
    result = CliRunner().invoke(main, ["db", "ship", str(src), "--out", str(shipped)])
    assert result.exit_code == 0 and "wrote 2 winners" in result.output, result.output
    assert not (folder / "GPU.db-wal").exists()
    assert TunedDB(src).trials() and not open_db(str(shipped), read_only=True)["trials"].count
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = verify_winners(TunedDB(src), device=device)
    assert [r[2] for r in rows] == ["ok", "ok"], rows
    # A read-only folder, as site-packages may be: the lookup still reads it.
    os.chmod(folder, stat.S_IRUSR | stat.S_IXUSR)
    os.chmod(shipped, stat.S_IRUSR)
    try:
        lookup = Lookup(user_path=tmp_path / "none.db", shipped_paths=[shipped]).load()
        gpu = gpu_info(torch.device(device)) if device == "cuda" else INTERPRETER
        assert len(lookup.exact) == 2 or gpu.name != INTERPRETER.name
        assert not [r for r in lookup.reports if "shipped" in r]
    finally:
        os.chmod(folder, stat.S_IRWXU)


def test_verify_reports_a_wrong_winner(tmp_path):
    src = tmp_path / "run.db"
    tune(TINY[:1], db_path=src, trials=2, progress=False)
    db = TunedDB(src)
    (w,) = db.winners()
    from maxsim_forge.tuned_db import BucketKey

    key = BucketKey(**{k: w[k] for k in BucketKey.__dataclass_fields__})
    db.put_winner(key, {**{k: v for k, v in w.items() if k not in BucketKey.__dataclass_fields__},
                        "config": {**w["config"], "block_q": 24}})
    result = CliRunner().invoke(main, ["db", "verify", "--db", str(src)])
    assert result.exit_code == 1 and "pruned_static" in result.output


def test_shapes_file_and_its_errors(tmp_path):
    shapes = tmp_path / "shapes.json"
    shapes.write_text(json.dumps([{"layout": "pairs", "dtype": "fp16", "dim": 32, "lq": 8, "ld": 16, "nb": 3}]))
    result = CliRunner().invoke(main, ["tune", "--shapes", str(shapes), "--trials", "2", "--quiet",
                                       "--db", str(tmp_path / "t.db")])
    assert result.exit_code == 0, result.output
    assert ": 1 bucket in " in result.output
    assert TunedDB(tmp_path / "t.db").winners()[0]["layout"] == "pairs"
    shapes.write_text(json.dumps([{"layout": "pairs", "dtype": "fp16", "dim": 32, "lq": 8, "ld": 16, "batch": 3}]))
    result = CliRunner().invoke(main, ["tune", "--shapes", str(shapes), "--db", str(tmp_path / "t.db")])
    assert result.exit_code == 1 and "bucket 0" in result.output and "fields:" in result.output
    shapes.write_text(json.dumps([{"layout": "diagonal", "dtype": "fp16", "dim": 32, "lq": 8, "ld": 16, "nb": 3}]))
    result = CliRunner().invoke(main, ["tune", "--shapes", str(shapes), "--db", str(tmp_path / "t.db")])
    assert result.exit_code == 1 and "layout='diagonal'" in result.output


@pytest.mark.parametrize("layout", ("padded", "allpairs", "packed", "pairs"))
def test_first_docs_is_the_same_call_on_fewer_docs(layout):
    from cases import make_case

    from maxsim_forge._problems import first_docs
    from maxsim_forge.runtime import launch_prepared

    d_kind = "lengths" if layout == "padded" else "mask" if layout == "allpairs" else "none"
    prep, ref = make_case(layout, "fp16", nq=2, lq=9, nb=7, ld=20, dim=32, d_kind=d_kind)
    cfg = KernelConfig(block_q=16, block_d=16, block_k=32)
    part = first_docs(prep, 4)
    assert part.launch_kwargs["nb"] == 4 and prep.launch_kwargs["nb"] == 7
    out = launch_prepared(part, cfg)
    want = ref[:4] if layout == "pairs" else ref[..., :4]
    torch.testing.assert_close(out.reshape(want.shape).double().cpu(), want.cpu(), rtol=1e-5, atol=1e-4)
    assert part.d.data_ptr() == prep.d.data_ptr(), "a view, not a copy"


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
