"""The tuner's replay harness on synthetic exhaustive tables, and the scripts that make and read them."""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import json
import math
import random
import re
from pathlib import Path

import optuna
import pytest

from maxsim_forge._keys import DEFAULT_SMEM_LIMIT, GpuInfo
from maxsim_forge._problems import synth
from maxsim_forge.tuned_db import TunedDB
from maxsim_forge.tuner import Bucket, space_hash, valid_configs
from maxsim_forge.tuner import _replay
from maxsim_forge.tuner._compile import MISMATCH, OK
from maxsim_forge.tuner._replay import (
    ExhaustiveTable, ReplaySpace, Strategy, Summary, TableRow, heuristic_standing, judge, mann_whitney_less, replay,
)
from maxsim_forge.tuner._space import bucket_space, neighbors
from maxsim_forge.tuner._study import BucketTuner, TuneOptions

# A real bucket's space (528 valid configs), small enough to replay in a blink.
SMALL = Bucket(layout="padded", dtype="fp16", dim=64, lq=32, nb=1000, ld=300, d_mask="lengths", name="colbert")
GPU = GpuInfo(name="SYNTHETIC_GPU", cc="9.0", sm_count=132, smem_limit=DEFAULT_SMEM_LIMIT)
BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def configs() -> list:
    return valid_configs(SMALL.spec, SMALL.sizes, sm_count=GPU.sm_count, smem_limit=GPU.smem_limit)


def cost(c) -> float:
    """A smooth bowl in the knobs (best near 32-row query tiles, 32-token doc tiles, 4 warps)."""
    return (1.0 + 0.3 * abs(math.log2(c.block_q / 32)) + 0.2 * abs(math.log2(c.block_d / 32))
            + 0.1 * abs(math.log2(c.num_warps / 4)) + 0.05 * abs(c.num_stages - 3) + 0.25 * (c.q_mode != "tile")
            + 0.1 * math.log2(c.split_d) + 0.05 * c.masked_loop + 0.03 * (c.defer_max + c.overlap_max))


def table_of(times: dict, *, failed=(), complete: bool = True) -> ExhaustiveTable:
    rows = [TableRow(c, MISMATCH, None) if c in failed else TableRow(c, OK, t) for c, t in times.items()]
    return ExhaustiveTable(SMALL, GPU, {"torch": "test"}, "2026-12-05", space_hash(), rows, complete)


def synthetic(seed: int, *, needle=None, fail_share: float = 0.0) -> ExhaustiveTable:
    """The smooth cost plus 2% noise; a planted ``needle`` at half the best of the rest (the
    only config within 3%); a share of the others failed."""
    rng = random.Random(seed)
    times = {c: cost(c) * (1 + rng.gauss(0, 0.02)) for c in configs()}
    if needle is not None:
        times[needle] = 0.5 * min(t for c, t in times.items() if c != needle)
    failed = {c for c in times if c != needle and rng.random() < fail_share}
    return table_of(times, failed=failed)


class FixedOrder(optuna.samplers.BaseSampler):
    """Proposes ``order[trial.number]`` (the last one past its end)."""

    def __init__(self, order):
        self.order = order

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, name, distribution):
        return getattr(self.order[min(trial.number, len(self.order) - 1)], name)


def use_order(monkeypatch, order) -> str:
    monkeypatch.setitem(_replay.STRATEGIES, "fixed", Strategy("fixed", "a fixed order", lambda s, b: FixedOrder(order)))
    return "fixed"


# ---- counting
def test_trials_count_distinct_configs_timed_until_one_within_the_band(monkeypatch):
    cs = configs()
    best, near, far, failing = cs[10], cs[20], cs[30], cs[40]
    times = {c: 2.0 for c in cs} | {best: 1.0, near: 1.02, far: 1.10}
    table = table_of(times, failed={failing})
    knobs = bucket_space(cs)
    pruned = next(c for c in itertools.starmap(lambda *v: dataclasses.replace(cs[0], **dict(zip(knobs, v))),
                                               itertools.product(*knobs.values())) if c not in set(cs))
    # A repeat and a statically pruned proposal are free; a failure costs a trial.
    name = use_order(monkeypatch, [far, far, failing, pruned, near, best])
    run = replay(table, name, budget=10)
    assert run.timed[:4] == (far.key(), failing.key(), near.key(), best.key())
    assert run.trials == 3 and run.best_ratio == 1.0
    assert replay(table, name, budget=10, band=1.01).trials == 4
    # Past half the budget, the best config's one-knob neighbours go before the sampler's.
    short = replay(table, name, budget=3)
    assert short.timed[:2] == (far.key(), failing.key())
    assert short.timed[2] in {c.key() for c in neighbors(far, set(cs))}
    third = next(c for c in cs if c.key() == short.timed[2])
    assert short.best_ratio == pytest.approx(min(1.10, times[third]))


def test_counting_on_a_planted_needle_for_every_strategy():
    cs = configs()
    needle = cs[len(cs) // 3]
    space = ReplaySpace.of(synthetic(1, needle=needle, fail_share=0.1))
    for strategy in ("tpe", "random", "nsga2"):
        for seed in range(2):
            run = replay(space, strategy, seed=seed, budget=40)
            expected = run.timed.index(needle.key()) + 1 if needle.key() in run.timed else None
            assert run.trials == expected, (strategy, seed)
            assert (run.best_ratio == 1.0) == (expected is not None)
            assert len(set(run.timed)) == len(run.timed) <= 40
    order = list(space.valid)
    random.Random(5).shuffle(order)
    assert replay(space, "random", seed=5, budget=len(order)).trials == order.index(needle) + 1


def test_random_needs_the_expected_trials_of_sampling_without_replacement():
    cs = configs()
    n, k, budget, seeds = len(cs), 4, 120, 1000
    good = set(random.Random(0).sample(cs, k))
    space = ReplaySpace.of(table_of({c: 1.0 if c in good else 1.5 + cost(c) for c in cs}))
    # The first good config's position: P(X > x) = C(n - x, k) / C(n, k).
    tail = [math.comb(n - x, k) / math.comb(n, k) for x in range(n + 1)]
    pmf = {x: tail[x - 1] - tail[x] for x in range(1, n + 1)}
    mean = sum(x * p for x, p in pmf.items())
    sd = math.sqrt(sum((x - mean) ** 2 * p for x, p in pmf.items()))
    assert mean == pytest.approx((n + 1) / (k + 1))
    full = [replay(space, "random", seed=s, budget=n).trials for s in range(seeds)]
    assert abs(sum(full) / seeds - mean) < 4 * sd / math.sqrt(seeds)
    reach = 1 - tail[budget]
    got = sum(replay(space, "random", seed=s, budget=budget).trials is not None for s in range(seeds)) / seeds
    assert abs(got - reach) < 4 * math.sqrt(reach * (1 - reach) / seeds)


def test_a_strategy_that_always_proposes_the_best_scores_one(monkeypatch):
    table = synthetic(2)
    space = ReplaySpace.of(table)
    best = min((c for c in space.valid), key=lambda c: space.outcome[c][1])
    name = use_order(monkeypatch, [best])
    for batch in (1, 4):
        run = replay(space, name, seed=0, budget=24, batch=batch)
        assert run.trials == 1 and run.timed == (best.key(),) and run.best_ratio == 1.0
    j = judge(table, (name, "random"), seeds=8, budget=24)
    s = j.summaries[name]
    assert (s.quantile(0.5), s.quantile(1.0), s.reached) == (1, 1, 1.0)
    assert not j.tpe_vs_random  # no TPE in this judgement: no test


# ---- the replay is tune's search
class TableTuner(BucketTuner):
    """The real BucketTuner.run with a table for compile, check and timer."""

    def __init__(self, table, db, opts):
        super().__init__(table.bucket, db, table.gpu, opts)
        self.rows = {r.config: r for r in table.rows}
        self.order: list = []

    @property
    def problem(self):
        return synth(self.bucket.spec, self.bucket.sizes, device="meta", seed=self.opts.seed)

    def _check(self, cfg, seed):
        self.order += [cfg.key()] if cfg.key() not in self.order else []
        return self.rows[cfg].status, ""

    def _time(self, cfg):
        return self.rows[cfg].time_ms

    def _commit(self, study, name, *, cut=False):
        return tuple(self.order)


class TablePool:
    def run(self, jobs):
        return [(OK, "")] * len(jobs)


@pytest.mark.parametrize("trials, batch", [(24, 1), (30, 5)])
def test_replay_follows_the_tuners_own_loop_step_for_step(tmp_path, trials, batch):
    table = synthetic(3, fail_share=0.15)
    opts = TuneOptions(trials=trials, seed=0, workers=batch, device="cuda", pool=TablePool())
    real = TableTuner(table, TunedDB(tmp_path / "t.db"), opts).run()
    run = replay(table, "tpe", seed=0, budget=trials, batch=batch, seeded=True)
    assert run.timed == real and len(real) == trials
    assert run.timed[0] == ReplaySpace.of(table).heuristic().key()  # tune enqueues it first
    assert replay(table, "tpe", seed=0, budget=trials, batch=batch).timed != real  # seeding off by default


def test_the_heuristic_seed_is_trial_one_only_when_asked_for():
    space0 = ReplaySpace.of(synthetic(4))
    h = space0.heuristic()
    space = ReplaySpace.of(synthetic(4, needle=h))
    for strategy in ("tpe", "random", "nsga2"):
        assert replay(space, strategy, seed=1, budget=24, seeded=True).trials == 1
    order = list(space.valid)
    random.Random(1).shuffle(order)
    assert replay(space, "random", seed=1, budget=len(order)).trials == order.index(h) + 1
    assert heuristic_standing(space) == {"config": h.key(), "status": OK, "rank": 1, "of": len(space.valid),
                                         "gap": 1.0, "trials": 1}


def test_the_heuristic_alone_has_a_rank_and_a_gap():
    cs = configs()
    h = ReplaySpace.of(synthetic(0)).heuristic()
    others = [c for c in cs if c != h]
    times = {c: 2.0 + i / len(cs) for i, c in enumerate(others)} | {others[0]: 1.0, others[1]: 1.01, h: 1.2}
    got = heuristic_standing(ReplaySpace.of(table_of(times)))
    assert (got["rank"], got["of"], got["gap"], got["trials"]) == (3, len(cs), pytest.approx(1.2), None)


def test_a_narrower_table_is_replayed_on_its_own_configs_and_says_so():
    cs = configs()
    kept = [c for c in cs if c.q_mode != "tile" and not c.masked_loop]
    pruned_today = dataclasses.replace(kept[0], block_k=32)  # a dim of 64 is one 64-wide tile today
    table = table_of({c: cost(c) for c in kept} | {pruned_today: 0.1}, complete=False)
    space = ReplaySpace.of(table)
    assert space.valid == tuple(kept) and pruned_today not in space.outcome
    assert f"restricted to the table's {len(kept)} of today's {len(cs)} valid configs" in space.note
    assert "1 table configs that today's rules prune left out" in space.note and "incomplete" in space.note
    allowed = {c.key() for c in kept}
    for strategy in ("tpe", "random", "random-loop", "nsga2"):
        for seeded in (False, True):
            assert set(replay(space, strategy, seed=0, budget=30, seeded=seeded).timed) <= allowed


# ---- statistics
def exact_p_less(a, b) -> float:
    """P(U >= observed) over every split of the pooled values (the exact one-sided test)."""
    pooled, n1 = a + b, len(a)

    def u(x, y):
        return sum((xi < yi) + 0.5 * (xi == yi) for xi in x for yi in y)

    seen = u(a, b)
    splits = list(itertools.combinations(range(len(pooled)), n1))
    hits = sum(u([pooled[i] for i in s], [pooled[i] for i in range(len(pooled)) if i not in s]) >= seen
               for s in splits)
    return hits / len(splits)


def test_mann_whitney_matches_the_exact_test_and_its_limits():
    a, b = [3, 5, 8, 9, 12, 13, 20], [7, 10, 14, 15, 19, 22, None]
    u, p = mann_whitney_less(a, b)
    assert u == sum((x < (math.inf if y is None else y)) for x in a for y in b)
    assert p == pytest.approx(exact_p_less(a, [math.inf if v is None else v for v in b]), abs=0.02)
    assert mann_whitney_less(list(range(1, 11)), list(range(11, 21)))[1] < 1e-3
    assert mann_whitney_less(list(range(11, 21)), list(range(1, 11)))[1] > 0.999
    assert 0.4 < mann_whitney_less([1, 2, 3, 4], [1, 2, 3, 4])[1] < 0.6
    assert mann_whitney_less([None, None], [None, None]) == (2.0, 1.0)


def test_summary_quantiles_count_a_miss_as_the_worst():
    s = Summary("x", (4, None, 1, 3, 2), best_ratio=1.0)
    assert (s.quantile(0.5), s.quantile(0.25), s.quantile(0.75), s.quantile(1.0)) == (3, 2, 4, math.inf)
    assert s.reached == 0.8
    row = s.as_row()
    assert row["worst"] is None and row["median"] == 3 and row["trials"] == [4, None, 1, 3, 2]


def test_judge_reports_tpe_against_random_plainly():
    cs = configs()
    j = judge(synthetic(6, needle=cs[7]), ("tpe", "random"), seeds=4, budget=16)
    assert j.configs == len(cs) and j.within_band == 1 and j.space == ""
    assert set(j.tpe_vs_random) == {"u", "p", "share"} and 0 <= j.tpe_vs_random["p"] <= 1
    assert j.verdict().startswith(("TPE beats random", "TPE does not clearly beat random"))


# ---- the table's file
def test_tables_round_trip_through_json(tmp_path):
    table = synthetic(7, fail_share=0.2)
    path = tmp_path / "t.json"
    table.save(path)
    assert ExhaustiveTable.load(path) == table
    assert ExhaustiveTable.from_json(json.loads(json.dumps(table.to_json()))) == table
    assert len(path.read_text().splitlines()) > len(table.rows)  # one row a line


def _doc():
    cs = configs()[:3]
    return table_of({cs[0]: 1.0, cs[1]: 2.0, cs[2]: None}, failed={cs[2]}).to_json()


def _set(path: str, value):
    def edit(doc):
        *head, last = path.split(".")
        d = doc
        for k in head:
            d = d[int(k)] if k.isdigit() else d[k]
        if value is KeyError:
            del d[last]
        else:
            d[int(last) if last.isdigit() else last] = value
        return doc
    return edit


@pytest.mark.parametrize("edit, message", [
    (_set("format", "bench"), "not an exhaustive table"),
    (_set("version", 2), "version 2; this package reads version 1"),
    (_set("date", KeyError), "fields .*accepted: exactly"),
    (_set("extra", 1), "fields .*accepted: exactly"),
    (_set("bucket.layout", "ragged"), "bucket .*layout='ragged' is not supported"),
    (_set("bucket.nb", 0), "bucket sizes .*accepted: positive integers"),
    (_set("bucket.colour", 1), "bucket .*unexpected keyword"),
    (_set("gpu.sm_count", "132"), "gpu .*sm_count and smem_limit \\(integers\\)"),
    (_set("date", "5 Dec 2026"), "date '5 Dec 2026'; accepted: YYYY-MM-DD"),
    (_set("rows", []), "rows must be a non-empty list"),
    (_set("rows.0.config.warps", 4), "row 0: config .*unknown config knob"),
    (_set("rows.0.config.block_q", 48), "row 0: block_q=48; accepted: 16, 32, 64, 128, 256"),
    (_set("rows.0.config.exact_k", 0), "row 0: exact_k=0; accepted: False, True"),
    (_set("rows.0.status", "fast"), "row 0: status 'fast'; accepted: ok, compile_failed"),
    (_set("rows.0.time_ms", None), "row 0: status 'ok' with time_ms None"),
    (_set("rows.0.time_ms", -1.0), "row 0: status 'ok' with time_ms -1.0"),
    (_set("rows.0.time_ms", True), "row 0: status 'ok' with time_ms True"),
    (_set("rows.2.time_ms", 1.0), "row 2: status 'mismatch' with time_ms 1.0"),
    (lambda doc: {**doc, "rows": doc["rows"] + doc["rows"][:1]}, "row 3: config .* appears twice"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_an_invalid_table_is_refused_with_a_clear_error(tmp_path, edit, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(edit(_doc())))
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: {message}"):
        ExhaustiveTable.load(path)


def test_bad_replay_arguments_are_refused():
    table = synthetic(8)
    failed = dataclasses.replace(table, rows=[dataclasses.replace(r, status=MISMATCH, time_ms=None) for r in table.rows])
    with pytest.raises(ValueError, match="no config that passed .* is valid in today's space: nothing to find"):
        replay(failed)
    with pytest.raises(ValueError, match="strategy 'annealing' is unknown; accepted: tpe, random"):
        replay(table, "annealing")
    with pytest.raises(ValueError, match="budget=0; accepted: a positive integer"):
        replay(table, budget=0)


# ---- the scripts
def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_collect_exhaustive_times_a_shrunk_bucket_in_the_interpreter_and_resumes(tmp_path, capsys):
    collect = _script("collect_exhaustive")
    label = collect.BUCKETS[0]
    (path,) = collect.collect((label,), out=tmp_path, max_configs=2, progress=False)
    first = ExhaustiveTable.load(path)
    assert first.bucket.label() == collect.select((label,))[0].tiny().label()
    assert first.space_hash == space_hash() and not first.complete and len(first.rows) == 2
    assert all(r.status == OK and r.time_ms > 0 for r in first.rows)
    collect.collect((label,), out=tmp_path, max_configs=3, progress=False)
    again = ExhaustiveTable.load(path)
    assert again.rows[:2] == first.rows and len(again.rows) == 3  # resumed: the first two kept as timed
    out = _script("replay_tuner").main([str(tmp_path), "--seeds", "2", "--budget", "3", "--strategies", "tpe,random"])
    doc = json.loads(out.read_text())
    assert [s["strategy"] for s in doc["tables"][0]["strategies"]] == ["tpe", "random"]
    assert doc["tables"][0]["strategies"][1]["reached"] == 1.0  # three configs, a budget of three
    assert "TPE" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no label of the default preset"):
        collect.collect(("colbert fp16 d128",), out=tmp_path)


def test_replay_tuner_reads_the_older_three_bucket_tables(tmp_path):
    old = [{"block_q": bq, "block_d": bd, "block_k": 128, "num_warps": 4, "num_stages": 3, "q_mode": "loop",
            "split_d": 1} for bq in (16, 32) for bd in (16, 32, 64)]
    doc = {"gpu": "NVIDIA H100 80GB HBM3", "date": "2026-11-27", "triton": "3.6.0", "torch": "2.11.0",
           "buckets": [{"name": "colbert-1k", "configs": [{"config": c, "status": "ok", "time_ms": 1.0 + i / 10}
                                                          for i, c in enumerate(old)]}]}
    path = tmp_path / "exhaustive-h100-2026-11-27.json"
    path.write_text(json.dumps(doc))
    (table,) = _script("replay_tuner").load_tables([str(path)])
    assert table.bucket.label() == "colbert padded/fp16/dim128 nq1 lq32 nb1024 ld512 ragged" and table.gpu.sm_count == 132
    assert "old table" in table.note
    space = ReplaySpace.of(table)
    assert len(space.valid) == 6 and space.note.startswith("restricted to the table's 6 of today's")
    assert space.best == 1.0
