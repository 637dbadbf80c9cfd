"""One Optuna study per bucket: ask a batch, prune statically, compile in parallel,
check against the reference, time one at a time, tell; then re-time the best few
and store the winner."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import warnings
from dataclasses import dataclass

import optuna
import torch
from optuna.trial import TrialState

from .. import __version__
from .._inputs import Prepared
from .._keys import BucketKey, Entry, GpuInfo, bucket, nearest, query_tile_limit
from .._problems import Problem, first_docs, synth
from ..codegen import ConfigError, KernelConfig, is_current, kernel_hash, load_variant, template_hash
from ..runtime import bucket_key, default_config
from ..tuned_db import TunedDB
from . import _compile, _fleet
from ._baseline import torch_baseline
from ._compile import OK, PRUNED_STATIC, RUNTIME_FAILED, CompileJob
from ._presets import Bucket
from ._space import (
    bucket_space, candidates_hash, check_static, neighbors, space_hash, space_sizes, valid_configs,
)
from ._timing import time_fn
from ._verify import check_variant

log = logging.getLogger("maxsim_forge.tuner")

# Docs in the fresh problem every candidate is checked on before it is timed.
CHECK_DOCS = 48
# Past this share of the trial budget, the one-knob neighbours of the best so far are
# enqueued ahead of the sampler's proposals (local refinement of what TPE found).
REFINE_AT = 0.5
# Candidates re-timed before a winner is committed, and the band kept beside it.
RETIME_TOP = 3
NEAR_BEST = 1.03
# Winners of the nearest tuned buckets of the same family that seed a study.
FAMILY_SEEDS = 3
# Proposals asked per trial of the budget at most: the sampler may keep proposing
# configs that are pruned statically or were measured already, which cost nothing.
MAX_ASKS = 4


@dataclass
class TuneOptions:
    trials: int = 24
    seed: int = 0
    workers: int = 1
    storage: object = None  # an optuna storage or URL; None keeps studies in memory
    deadline: float | None = None  # time.monotonic() after which no new batch starts
    device: str = "cuda"
    pool: object = None  # a _compile.CompilePool shared by the buckets of a run


NOT_REACHED = "not reached: time budget"  # why a bucket after the deadline was not tuned


@dataclass
class BucketResult:
    bucket: Bucket
    key: BucketKey
    config: KernelConfig | None = None
    time_ms: float | None = None
    baseline_ms: float | None = None
    trials: int = 0
    skipped: bool = False
    why: str = ""  # why a skipped bucket was not tuned: "kept", "cut: time budget", "not reached: time budget"
    cut: bool = False  # the time budget stopped the study before its trial target
    device: str = ""  # where it was tuned: "cuda:0", or the physical GPU a worker was given

    @property
    def unfinished(self) -> bool:
        """The time budget stopped this bucket's study short, or came before it started."""
        return self.cut or self.why == NOT_REACHED

    @property
    def speedup(self) -> float | None:
        if self.time_ms and self.baseline_ms:
            return self.baseline_ms / self.time_ms
        return None


def config_from_trial(trial: optuna.trial.BaseTrial, space: dict[str, list]) -> KernelConfig:
    return KernelConfig(**{name: trial.suggest_categorical(name, values) for name, values in space.items()})


def make_sampler(seed: int, trials: int) -> optuna.samplers.BaseSampler:
    """Multivariate TPE; a batch of proposals is drawn before any is told (one per
    compile worker), and the constant liar keeps the proposals of a batch apart."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(multivariate=True, constant_liar=True, seed=seed,
                                          n_startup_trials=max(4, trials // 3))


def study_name(gpu: GpuInfo, key: BucketKey) -> str:
    return f"maxsim-forge|{gpu.name}|{key.label()}|{template_hash()}|{space_hash()}"


def _finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def spent(study: optuna.Study) -> int:
    """Trials of the budget used, by every process sharing the study: distinct configs
    that were compiled (then checked and timed, or failed). A proposal pruned by the
    static checks, or one measured before, costs nothing and does not count."""
    return len({t.user_attrs.get("config_key") for t in _finished(study)
                if t.user_attrs.get("status", OK) != PRUNED_STATIC})


class BucketTuner:
    """Tunes one bucket on one device into one database."""

    def __init__(self, bucket: Bucket, db: TunedDB, gpu: GpuInfo, opts: TuneOptions):
        self.bucket, self.db, self.gpu, self.opts = bucket, db, gpu, opts
        # The key needs shapes and lengths only: a resumed run skips finished buckets
        # without making their data.
        shapes = synth(bucket.spec, bucket.sizes, device="meta", seed=opts.seed, skew=bucket.layout == "packed")
        self.spec = shapes.prep.spec
        self.key = bucket_key(shapes.prep, gpu)
        self._problem: Problem | None = None
        self._timed: list[tuple[Prepared, float]] | None = None
        self.hash = template_hash()
        self.seen: dict[str, tuple[str, float | None]] = {}
        self.told: set[int] = set()

    @property
    def timed(self) -> list[tuple[Prepared, float]]:
        """What a candidate is timed on, each with the factor that scales its time to the
        bucket's representative size: the representative problem, and its first docs at
        the low end of the bucket's doc-count range (a bucket spans n/2 + 1 to n docs,
        n a power of two), so the winner is good across the range, not at one end."""
        if self._timed is None:
            prep = self.problem.prep
            nb = prep.launch_kwargs["nb"]
            low = bucket(nb) // 2 + 1
            self._timed = [(prep, 1.0)]
            if 1.5 * low <= nb:
                self._timed.append((first_docs(prep, low), nb / low))
        return self._timed

    @property
    def problem(self) -> Problem:
        """The bucket's data on the device, made on first use."""
        if self._problem is None:
            self._problem = synth(self.bucket.spec, self.bucket.sizes, device=self.opts.device, seed=self.opts.seed,
                                  skew=self.bucket.layout == "packed")
        return self._problem

    # ---- one candidate
    def _check(self, cfg: KernelConfig, seed: int) -> tuple[str, str]:
        status, msg = check_variant(self.spec, cfg, self.bucket.sizes.scaled(CHECK_DOCS), device=self.opts.device,
                                    seed=seed, smem_limit=self.gpu.smem_limit, skew=self.bucket.layout == "packed")
        return status, msg if status != OK else ""

    def _time(self, cfg: KernelConfig) -> float:
        """Median ms at the representative size, averaged (geometric mean) with the
        low end of the bucket's range scaled to that size."""
        variant = load_variant(self.spec, cfg, smem_limit=self.gpu.smem_limit)
        scaled = []
        for prep, factor in self.timed:
            t = time_fn(lambda p=prep: variant.launch(p.q, p.d, **p.launch_kwargs), device=self.opts.device).median_ms
            scaled.append(max(t * factor, 1e-9))
        return math.exp(sum(math.log(t) for t in scaled) / len(scaled))

    def _record(self, study_id: str, number: int, cfg: KernelConfig, status: str, t: float | None, msg: str) -> None:
        self.db.add_trial(self.key, study=study_id, number=number, config=cfg.to_dict(), config_key=cfg.key(),
                          status=status, time_ms=t, message=msg, template_hash=self.hash)

    # ---- the study
    def run(self, bar=None) -> BucketResult:
        opts = self.opts
        name = study_name(self.gpu, self.key)
        space = valid_configs(self.spec, self.bucket.sizes, sm_count=self.gpu.sm_count, smem_limit=self.gpu.smem_limit)
        # A space no larger than the trial budget is searched as a grid: every valid
        # config is enqueued. Otherwise multivariate TPE, seeded with the known good ones.
        exhaustive = len(space) <= opts.trials
        self.knobs = bucket_space(space)
        self.valid = set(space)
        sampler = make_sampler(opts.seed, opts.trials)
        study = optuna.create_study(study_name=name, storage=opts.storage, sampler=sampler,
                                    direction="minimize", load_if_exists=True)
        _fleet.fail_dead_trials(study)  # a dead worker's running trials: failed, and retried
        if not study.get_trials(deepcopy=False):
            self._enqueue_seeds(study, space if exhaustive else [])
        for t in _finished(study):  # outcomes measured before (by any worker sharing the study)
            if "config_key" in t.user_attrs and "status" in t.user_attrs:
                self.seen[t.user_attrs["config_key"]] = (t.user_attrs["status"], t.value)
        target = min(opts.trials, len(space)) if exhaustive else opts.trials
        batch = max(1, opts.workers)
        asks = 0
        cut = False
        while spent(study) < target and asks < MAX_ASKS * target:
            if opts.deadline is not None and time.monotonic() > opts.deadline:
                cut = True
                break
            want = min(batch, target - spent(study))
            _fleet.fail_dead_trials(study)
            asked = _fleet.ask(study, want)
            asks += want
            try:
                with _fleet.heartbeat(study, asked):  # beats while they run: a dead worker's stop
                    self._evaluate(study, asked)
            except optuna.exceptions.UpdateFinishedTrialError:
                # Another worker took these trials for dead (our heartbeats were late) and
                # retries them: their results go; the study goes on.
                log.warning("trials of %s were taken over by another worker; their results are dropped", name)
            finally:  # every asked trial is told: none is left running
                for trial in asked:
                    if trial.number not in self.told:
                        self._tell(study, trial, state=TrialState.FAIL)
            done = spent(study)
            if not exhaustive and REFINE_AT * target <= done < target:
                self._enqueue_neighbours(study, min(batch, target - done))
            if bar is not None:
                bar.n = min(spent(study), target)
                best = _best(study)
                bar.set_postfix_str(f"best {best:.4f} ms" if best is not None else "no winner yet")
                bar.refresh()
        return self._commit(study, name, cut=cut)

    def _enqueue_seeds(self, study: optuna.Study, grid: list[KernelConfig]) -> None:
        """A new study's first trials: the current winner, the heuristic default, the
        winners next door and their twins, then every config of ``grid`` (the whole space
        where it is searched as a grid)."""
        seeds = []
        current = self.db.winner(self.key)
        if current is not None and is_current(current):
            seeds.append(KernelConfig.from_dict(current["config"]))
        seeds.append(default_config(self.spec, **self.problem.prep.sizes, sm_count=self.gpu.sm_count,
                                    smem_limit=self.gpu.smem_limit))
        seeds += self._family_winners()
        # A loop config of one query tile has a straight-line twin (q_mode tile), which
        # was faster in most buckets where both ran: try the twin of every seed.
        seeds += [twin for cfg in seeds if cfg.q_mode == "loop"
                  and (twin := dataclasses.replace(cfg, q_mode="tile")) in self.valid]
        # Folded queries: the same tiles on the persistent grid, which keeps each query
        # tile across docs, and the other way round.
        other = {"fold": "persist", "persist": "fold"}
        seeds += [twin for cfg in seeds if cfg.q_mode in other
                  and (twin := dataclasses.replace(cfg, q_mode=other[cfg.q_mode])) in self.valid]
        # Where docs end mid-tile, the same config with its partial tile pipelined in
        # one masked loop.
        seeds += [twin for cfg in seeds if not cfg.masked_loop
                  and (twin := dataclasses.replace(cfg, masked_loop=True)) in self.valid]
        seeds += grid
        for cfg in dict.fromkeys(seeds):
            study.enqueue_trial(cfg.to_dict(), skip_if_exists=True)

    def _family_winners(self) -> list[KernelConfig]:
        """Winners of the other tuned buckets of this family on this GPU nearest to this one
        (the lookup's rule, :func:`nearest`) that are valid here: what worked next door is
        worth one trial."""
        k = self.key
        entries = []
        for r in self.db.winners(gpu=k.gpu, layout=k.layout, dtype=k.dtype, precision=k.precision, dim=k.dim,
                                 codes=k.codes):
            other = BucketKey.from_row(r)
            if other == k:
                continue
            try:
                config = KernelConfig.from_dict(r["config"])
            except (ConfigError, TypeError):
                continue  # a config this version cannot read: never valid here
            entries.append(Entry(sizes=other.sizes, config=config, docs=other.docs or "", row=r))
        sizes = self.bucket.sizes
        out: list[KernelConfig] = []
        for e in nearest(entries, k.sizes, docs=k.docs, tallest=query_tile_limit(nq=sizes.nq, lq=sizes.lq),
                         usable=lambda e: e.config in self.valid and is_current(e.row)):
            if e.config not in out:
                out.append(e.config)
            if len(out) == FAMILY_SEEDS:
                break
        return out

    def _enqueue_neighbours(self, study: optuna.Study, limit: int) -> None:
        timed = [(v, key) for key, (status, v) in self.seen.items() if status == OK and v is not None]
        if not timed:
            return
        best_key = min(timed)[1]
        best = next((c for c in self.valid if c.key() == best_key), None)
        if best is None:
            return
        fresh = [c for c in neighbors(best, self.valid) if c.key() not in self.seen][:limit]
        for cfg in fresh:
            study.enqueue_trial(cfg.to_dict(), skip_if_exists=True)

    def _evaluate(self, study: optuna.Study, asked: list[optuna.Trial]) -> None:
        opts = self.opts
        pending: list[tuple[optuna.Trial, KernelConfig]] = []
        for trial in asked:
            cfg = config_from_trial(trial, self.knobs)
            trial.set_user_attr("config_key", cfg.key())
            trial.set_user_attr("config", cfg.to_dict())
            if cfg.key() in self.seen:  # a proposal already measured: reuse its outcome
                status, value = self.seen[cfg.key()]
                trial.set_user_attr("status", status)
                if status == OK and value is not None:
                    self._tell(study, trial, value)
                else:
                    self._tell(study, trial, state=TrialState.PRUNED)
                continue
            reason = check_static(self.spec, cfg, self.bucket.sizes, sm_count=self.gpu.sm_count,
                                  smem_limit=self.gpu.smem_limit)
            if reason is not None:
                self._fail(study, trial, cfg, PRUNED_STATIC, reason)
                continue
            pending.append((trial, cfg))
        jobs = [CompileJob(self.spec, cfg, self.bucket.sizes, opts.device, self.gpu.smem_limit) for _, cfg in pending]
        if opts.pool is not None and opts.device.startswith("cuda"):
            compiled = opts.pool.run(jobs)
        else:
            compiled = [_compile.compile_one(job) for job in jobs]
        for (trial, cfg), (status, msg) in zip(pending, compiled):
            if status != OK:
                self._fail(study, trial, cfg, status, msg)
                continue
            status, msg = self._check(cfg, seed=opts.seed * 1_000_003 + trial.number + 1)
            if status != OK:
                self._fail(study, trial, cfg, status, msg)
                continue
            try:
                t = self._time(cfg)
            except Exception as exc:  # noqa: BLE001
                self._fail(study, trial, cfg, RUNTIME_FAILED, str(exc)[-2000:])
                continue
            trial.set_user_attr("status", OK)
            self._tell(study, trial, t)
            self.seen[cfg.key()] = (OK, t)
            self._record(study.study_name, trial.number, cfg, OK, t, "")

    def _tell(self, study: optuna.Study, trial: optuna.Trial, value: float | None = None, *, state=None) -> None:
        # skip_if_finished: a trial another worker failed (taken for dead) stays failed.
        study.tell(trial, value, state=state, skip_if_finished=True)
        self.told.add(trial.number)

    def _fail(self, study, trial, cfg: KernelConfig, status: str, msg: str) -> None:
        """Invalid or failing candidates are pruned in Optuna and stored with their status."""
        trial.set_user_attr("status", status)
        self._tell(study, trial, state=TrialState.PRUNED)
        self.seen[cfg.key()] = (status, None)
        self._record(study.study_name, trial.number, cfg, status, None, msg)

    def _commit(self, study: optuna.Study, name: str, *, cut: bool = False) -> BucketResult:
        result = BucketResult(self.bucket, self.key, cut=cut)
        finished = _finished(study)
        result.trials = spent(study)
        ok = {}
        for t in finished:
            if t.state == TrialState.COMPLETE and t.user_attrs.get("status") == OK:
                ok.setdefault(t.user_attrs["config_key"], (t.value, KernelConfig.from_dict(t.user_attrs["config"])))
        if not ok:
            return result
        top = sorted(ok.values(), key=lambda v: v[0])[:RETIME_TOP]
        retimed = sorted(((self._time(cfg), cfg) for _, cfg in top), key=lambda v: v[0])
        best_t, best = retimed[0]
        near = [cfg.to_dict() for t, cfg in retimed[1:] if t <= best_t * NEAR_BEST]
        near += [cfg.to_dict() for v, cfg in sorted(ok.values(), key=lambda v: v[0])[RETIME_TOP:]
                 if v <= best_t * NEAR_BEST]
        baseline = time_fn(torch_baseline(self.problem.prep), device=self.opts.device).median_ms
        result.config, result.time_ms, result.baseline_ms = best, best_t, baseline
        stored = self.db.offer_winner(self.key, {
            "config": best.to_dict(), "time_ms": best_t, "baseline_ms": baseline,
            "speedup": baseline / best_t if best_t else None, "near_best": near, "trials": result.trials, "cut": int(cut),
            "seed": self.opts.seed, "template_hash": self.hash, "sm_count": self.gpu.sm_count,
            "kernel_hash": kernel_hash(self.spec.layout, self.spec.dtype, self.spec.dim, self.spec.precision, best,
                                       codes=self.spec.codes),
            "space_hash": candidates_hash(self.spec, self.bucket.sizes, sm_count=self.gpu.sm_count,
                                          smem_limit=self.gpu.smem_limit),
            "space_sizes": space_sizes(self.spec, self.bucket.sizes),
            "smem_limit": self.gpu.smem_limit, "triton_version": _triton_version(),
            "torch_version": str(torch.__version__), "package_version": __version__,
        }, study=True)  # compared with the stored row inside the write: another process may have written one
        if not cut:  # workers sharing the study: this one is done
            study.set_user_attr("committed_by", _fleet.worker_id())
        log.info("winner for %s: %s %.4f ms (study %s)%s", self.key.label(), best.key(), best_t, name,
                 "" if stored else "; the stored winner is faster and stays")
        return result


def _best(study: optuna.Study) -> float | None:
    values = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    return min(values) if values else None


def _triton_version() -> str:
    import triton

    return triton.__version__


__all__ = ["BucketResult", "BucketTuner", "TuneOptions", "config_from_trial", "make_sampler", "study_name"]
