"""The tuner, judged: replay its search on an exhaustive table instead of a GPU.

An :class:`ExhaustiveTable` holds the time (or the failure) of every valid config of one
bucket on one GPU. :func:`replay` runs a search strategy against it, the table standing in
for compile, check and timer, and counts the trials (distinct configs timed, as ``tune``
counts its budget) until a config within 3% of the table's best is timed. :func:`judge`
does that over many seeds per strategy and says whether TPE needs fewer trials than
random sampling (a one-sided Mann-Whitney U test).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import random
import statistics
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from .._problems import synth
from ..codegen import KernelConfig
from ..runtime import default_config
from ._compile import OK, PRUNED_STATIC
from ._space import bucket_space, neighbors, valid_configs
from ._tables import ExhaustiveTable, TableRow
from ._study import MAX_ASKS, NEAR_BEST, REFINE_AT, config_from_trial, make_sampler, spent

# ---- the space a replay searches
@dataclass(frozen=True)
class ReplaySpace:
    """The table's configs that today's rules keep, in ``valid_configs`` order (the tuner's
    space), with their outcomes; ``note`` says where that is narrower than today's space."""

    table: ExhaustiveTable
    valid: tuple[KernelConfig, ...]
    outcome: dict[KernelConfig, tuple[str, float | None]]
    best: float
    note: str

    @classmethod
    def of(cls, table: ExhaustiveTable) -> ReplaySpace:
        b, gpu = table.bucket, table.gpu
        today = valid_configs(b.spec, b.sizes, sm_count=gpu.sm_count, smem_limit=gpu.smem_limit)
        rows = {r.config: r for r in table.rows}
        valid = tuple(c for c in today if c in rows)
        outcome = {c: (rows[c].status, rows[c].time_ms) for c in valid}
        timed = [t for s, t in outcome.values() if s == OK]
        if not timed:
            raise ValueError(f"table of {b.label()}: no config that passed (status 'ok') is valid in today's "
                             "space: nothing to find")
        notes = []
        if len(valid) < len(today):
            notes.append(f"restricted to the table's {len(valid)} of today's {len(today)} valid configs")
        if len(valid) < len(rows):
            notes.append(f"{len(rows) - len(valid)} table configs that today's rules prune left out")
        if not table.complete:
            notes.append("the table is incomplete")
        return cls(table, valid, outcome, min(timed), "; ".join(notes))

    def heuristic(self) -> KernelConfig:
        """The heuristic default ``tune`` enqueues, for the sizes it computes it from."""
        b, gpu = self.table.bucket, self.table.gpu
        sizes = synth(b.spec, b.sizes, device="meta", seed=0, skew=b.layout == "packed").prep.sizes
        return default_config(b.spec, **sizes, sm_count=gpu.sm_count, smem_limit=gpu.smem_limit)

    def seeds(self) -> list[KernelConfig]:
        """What ``tune`` enqueues on an empty database: the heuristic default, then the
        straight-line, persistent/folded and masked-loop twins, as BucketTuner.run adds them."""
        valid = set(self.valid)
        seeds = [self.heuristic()]
        seeds += [t for c in seeds if c.q_mode == "loop" and (t := dataclasses.replace(c, q_mode="tile")) in valid]
        other = {"fold": "persist", "persist": "fold"}
        seeds += [t for c in seeds if c.q_mode in other
                  and (t := dataclasses.replace(c, q_mode=other[c.q_mode])) in valid]
        seeds += [t for c in seeds if not c.masked_loop and (t := dataclasses.replace(c, masked_loop=True)) in valid]
        return list(dict.fromkeys(seeds))


# ---- strategies
def _quiet(make: Callable[[], optuna.samplers.BaseSampler]) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return make()


_SCIPY = importlib.util.find_spec("scipy") is not None  # Optuna's GP and QMC samplers need it


@dataclass(frozen=True)
class Strategy:
    name: str
    what: str
    # (seed, trial budget) -> the sampler tune's loop asks; None: uniform order, no loop
    sampler: Callable[[int, int], optuna.samplers.BaseSampler] | None


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("tpe", "tune's search: multivariate TPE (constant liar), one-knob neighbours past half "
             "the budget, free repeats and static prunes", make_sampler),
    Strategy("random", "uniform over the valid configs, no repeats (the baseline)", None),
    Strategy("random-loop", "Optuna's RandomSampler in tune's loop (neighbours included)",
             lambda seed, budget: optuna.samplers.RandomSampler(seed=seed)),
    Strategy("nsga2", "NSGA-II in tune's loop, generations of a quarter of the budget",
             lambda seed, budget: optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, budget // 4))),
    *([Strategy("qmc", "scrambled Sobol points in tune's loop",
                lambda seed, budget: _quiet(lambda: optuna.samplers.QMCSampler(seed=seed, scramble=True))),
       Strategy("gp", "Gaussian-process sampler in tune's loop (categoricals one-hot; slow: minutes a run)",
                lambda seed, budget: _quiet(lambda: optuna.samplers.GPSampler(
                    seed=seed, n_startup_trials=max(4, budget // 6), warn_independent_sampling=False)))]
      if _SCIPY else []),
)}


# ---- one replay
@dataclass(frozen=True)
class ReplayRun:
    strategy: str
    seed: int
    trials: int | None  # trials until a config within the band was timed; None: not within the budget
    timed: tuple[str, ...]  # config keys in the order they were timed (failures included)
    best_ratio: float  # best time found within the budget over the table's best


def replay(table: ExhaustiveTable | ReplaySpace, strategy: str = "tpe", *, seed: int = 0, budget: int = 64,
           batch: int = 1, seeded: bool = False, band: float = NEAR_BEST) -> ReplayRun:
    """Run ``strategy`` on the table with ``tune --trials budget``'s budget, ``batch``
    proposals asked before any is told (tune's compile workers); ``seeded``: the heuristic
    default and its twins first, as ``tune`` enqueues them on an empty database."""
    space = table if isinstance(table, ReplaySpace) else ReplaySpace.of(table)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r} is unknown; accepted: {', '.join(STRATEGIES)}")
    for name, value in (("budget", budget), ("batch", batch)):
        if type(value) is not int or value < 1:
            raise ValueError(f"{name}={value!r}; accepted: a positive integer")
    seeds = space.seeds() if seeded else []
    make = STRATEGIES[strategy].sampler
    if make is None:
        rest = list(space.valid)
        random.Random(seed).shuffle(rest)
        order = [c for c in dict.fromkeys(seeds + rest) if c in space.outcome][:budget]
    else:
        order = _tune_loop(space, make(seed, budget), budget=budget, batch=batch, seeds=seeds)
    times = [space.outcome[c][1] for c in order]
    hit = next((i + 1 for i, t in enumerate(times) if t is not None and t <= space.best * band), None)
    found = min((t for t in times if t is not None), default=math.inf)
    return ReplayRun(strategy, seed, hit, tuple(c.key() for c in order), found / space.best)


def _tune_loop(space: ReplaySpace, sampler: optuna.samplers.BaseSampler, *, budget: int, batch: int,
               seeds: list[KernelConfig]) -> list[KernelConfig]:
    """BucketTuner.run and _evaluate with the table for compile, check and timer: the
    configs timed (or failed), in order. Kept step for step with tuner/_study.py."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # as tune: no line per study
    study = optuna.create_study(sampler=sampler, direction="minimize")
    valid = set(space.valid)
    knobs = bucket_space(list(space.valid))
    exhaustive = len(space.valid) <= budget
    seeds = [c for c in seeds if all(v in knobs[k] for k, v in c.to_dict().items())]  # narrowed tables
    for cfg in dict.fromkeys(seeds + (list(space.valid) if exhaustive else [])):
        study.enqueue_trial(cfg.to_dict(), skip_if_exists=True)
    seen: dict[str, tuple[str, float | None]] = {}
    order: list[KernelConfig] = []
    target = min(budget, len(space.valid)) if exhaustive else budget
    asks = 0
    while spent(study) < target and asks < MAX_ASKS * target:
        want = min(batch, target - spent(study))
        asked = [study.ask() for _ in range(want)]
        asks += want
        pending = []
        for trial in asked:
            cfg = config_from_trial(trial, knobs)
            trial.set_user_attr("config_key", cfg.key())
            trial.set_user_attr("config", cfg.to_dict())
            if cfg.key() in seen:  # measured before: its outcome again, free
                status, value = seen[cfg.key()]
                trial.set_user_attr("status", status)
                study.tell(trial, value if status == OK else None, state=None if status == OK else TrialState.PRUNED)
            elif cfg not in valid:  # the static checks (or a narrowed table) prune it: free
                trial.set_user_attr("status", PRUNED_STATIC)
                study.tell(trial, state=TrialState.PRUNED)
                seen[cfg.key()] = (PRUNED_STATIC, None)
            else:
                pending.append((trial, cfg))
        for trial, cfg in pending:
            status, value = space.outcome[cfg]
            trial.set_user_attr("status", status)
            study.tell(trial, value if status == OK else None, state=None if status == OK else TrialState.PRUNED)
            seen[cfg.key()] = (status, value)
            if cfg not in order:
                order.append(cfg)
        done = spent(study)
        if not exhaustive and REFINE_AT * target <= done < target:
            _enqueue_neighbours(study, space, seen, min(batch, target - done))
    return order


def _enqueue_neighbours(study: optuna.Study, space: ReplaySpace, seen: dict, limit: int) -> None:
    timed = [(v, key) for key, (status, v) in seen.items() if status == OK and v is not None]
    if not timed:
        return
    best_key = min(timed)[1]
    best = next(c for c in space.valid if c.key() == best_key)
    for cfg in [c for c in neighbors(best, set(space.valid)) if c.key() not in seen][:limit]:
        study.enqueue_trial(cfg.to_dict(), skip_if_exists=True)


# ---- many seeds, and the verdict
@dataclass(frozen=True)
class Summary:
    """Trials to the band over seeds (None: not within the budget, counted as worst)."""

    strategy: str
    trials: tuple[int | None, ...]
    best_ratio: float  # median over seeds of the best found within the budget / the table's best

    def quantile(self, p: float) -> float:
        """Linear between order statistics; inf where it reaches a seed that missed the band."""
        x = sorted(math.inf if t is None else t for t in self.trials)
        i, frac = divmod(p * (len(x) - 1), 1)
        lo = x[int(i)]
        if frac == 0 or math.isinf(x[int(i) + 1]):
            return lo if frac == 0 else math.inf
        return lo + (x[int(i) + 1] - lo) * frac

    @property
    def reached(self) -> float:
        return sum(t is not None for t in self.trials) / len(self.trials)

    def as_row(self) -> dict:
        """The distribution as JSON: a quantile past the budget is null."""
        q = {name: self.quantile(p) for name, p in (("median", 0.5), ("q1", 0.25), ("q3", 0.75), ("worst", 1.0))}
        return {"strategy": self.strategy, **{k: None if math.isinf(v) else v for k, v in q.items()},
                "reached": self.reached, "best_ratio": self.best_ratio, "trials": list(self.trials)}


def mann_whitney_less(a: list[int | None], b: list[int | None], *, missed: float = math.inf) -> tuple[float, float]:
    """One-sided Mann-Whitney U: (U of ``a``, p) for "``a`` tends to need fewer trials
    than ``b``"; ties count one half, a miss (None) ties with every other miss. Normal
    approximation with the tie correction and a continuity correction (fine from about
    eight samples a side); p is 1 where every value ties."""
    x = [missed if v is None else v for v in a]
    y = [missed if v is None else v for v in b]
    n1, n2 = len(x), len(y)
    u = sum((xi < yi) + 0.5 * (xi == yi) for xi in x for yi in y)
    pooled, n = x + y, n1 + n2
    ties = sum(c ** 3 - c for c in (pooled.count(v) for v in set(pooled)))
    var = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1)))
    if var <= 0:
        return u, 1.0
    z = (u - n1 * n2 / 2 - 0.5) / math.sqrt(var)
    return u, 0.5 * math.erfc(z / math.sqrt(2))


@dataclass
class Judgement:
    """One table's replay: a summary per strategy, the heuristic's standing and the test."""

    bucket: str
    space: str  # the space's note ("" when the table covers today's space)
    configs: int
    within_band: int  # configs within the band of the best: what a search must find
    summaries: dict[str, Summary]
    heuristic: dict
    tpe_vs_random: dict  # U, p and the share of (TPE, random) pairs where TPE needed fewer trials

    def verdict(self) -> str:
        if not (t := self.tpe_vs_random):
            return "TPE against random: not run"
        p = "p < 0.001" if t["p"] < 0.001 else f"p = {t['p']:.3f}"
        return (f"TPE {'beats' if t['p'] < 0.05 else 'does not clearly beat'} random sampling (one-sided "
                f"Mann-Whitney U, {p}; TPE needed fewer trials in {t['share']:.0%} of pairs, ties half)")


def heuristic_standing(space: ReplaySpace, band: float = NEAR_BEST) -> dict:
    """Where the heuristic default ranks among the table's timed configs (1 = best) and its
    time over the best; a config the table lacks has neither."""
    cfg = space.heuristic()
    status, t = space.outcome.get(cfg, ("not in the table", None))
    timed = sorted(v for s, v in space.outcome.values() if s == OK)
    rank = timed.index(t) + 1 if t is not None else None
    return {"config": cfg.key(), "status": status, "rank": rank, "of": len(timed),
            "gap": t / space.best if t is not None else None, "trials": 1 if t and t <= space.best * band else None}


def judge(table: ExhaustiveTable, strategies: tuple[str, ...] = tuple(STRATEGIES), *, seeds: int = 20,
          budget: int = 64, batch: int = 1, seeded: bool = False, band: float = NEAR_BEST) -> Judgement:
    """Every strategy over ``seeds`` seeds (0 .. seeds - 1) on one table."""
    space = ReplaySpace.of(table)
    summaries = {}
    for name in strategies:
        runs = [replay(space, name, seed=seed, budget=budget, batch=batch, seeded=seeded, band=band)
                for seed in range(seeds)]
        summaries[name] = Summary(name, tuple(r.trials for r in runs), statistics.median(r.best_ratio for r in runs))
    test = {}
    if "tpe" in summaries and "random" in summaries:
        a, b = summaries["tpe"].trials, summaries["random"].trials
        u, p = mann_whitney_less(list(a), list(b))
        test = {"u": u, "p": p, "share": u / (len(a) * len(b))}
    within = sum(1 for s, t in space.outcome.values() if s == OK and t <= space.best * band)
    return Judgement(table.bucket.label(), space.note, len(space.valid), within, summaries,
                     heuristic_standing(space, band), test)


__all__ = ["ExhaustiveTable", "Judgement", "ReplayRun", "ReplaySpace", "STRATEGIES", "Strategy", "Summary",
           "TableRow", "heuristic_standing", "judge", "mann_whitney_less", "replay"]
