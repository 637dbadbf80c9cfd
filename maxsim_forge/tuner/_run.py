"""``maxsim-forge tune``: buckets -> studies -> the tuned database, on one or several GPUs."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch

from .._keys import INTERPRETER, gpu_info
from ..codegen import interpreting, is_current
from ..tuned_db import TunedDB, user_db_path
from ._presets import Bucket
from ._compile import CompilePool
from ._space import in_current_space
from . import _fleet
from ._backward import WinnersTuner
from ._study import NOT_REACHED, BucketResult, BucketTuner, TuneOptions, spent, study_name


def make_storage(url: str | None):
    """An Optuna storage from a URL: ``journal:PATH`` (or a ``.log``/``.journal`` file) for
    a journal file several processes of one machine can share; any SQLAlchemy URL
    (``postgresql://``, ``sqlite:///``) for a database any number of workers on any number
    of machines share, with heartbeats and retries of a dead worker's trials
    (:mod:`maxsim_forge.tuner._fleet`); None for memory."""
    if not url:
        return None
    path = journal_path(url)
    if path is not None:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(path))
    return _fleet.rdb_storage(url)


def journal_path(url: str) -> str | None:
    """The journal file a storage URL names (``journal:PATH``, or a ``.log``/``.journal``
    file), or None for a database URL."""
    if url.startswith("journal:") or url.endswith((".log", ".journal")):
        return url.removeprefix("journal:").removeprefix("//")
    return None


@dataclass
class TuneReport:
    results: list[BucketResult]
    device: str
    interpreted: bool
    wall_s: float


def _is_done(db: TunedDB, tuner: BucketTuner, *, refresh: bool = False) -> bool:
    """A bucket whose winner still runs the kernels it was timed with, from a study that
    reached its trial target, is finished (``--resume``); with ``refresh``, only if it was
    also found in this package's search space."""
    row = db.winner(tuner.key)
    return (bool(row) and is_current(row) and not row.get("cut")
            and (not refresh or in_current_space(row)))


def tune_on_device(
    buckets: list[Bucket],
    *,
    db_path: str | Path,
    trials: int,
    seed: int = 0,
    time_budget_s: float | None = None,
    resume: bool = False,
    refresh: bool = False,
    storage_url: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    device: str | None = None,
) -> list[BucketResult]:
    """Tune ``buckets`` one after another on one device into ``db_path``."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    device = device or ("cuda" if torch.cuda.is_available() and not interpreting() else "cpu")
    on_gpu = device.startswith("cuda")
    gpu = gpu_info(torch.device(device)) if on_gpu else INTERPRETER
    if workers is None:
        workers = max(1, min(16, (os.cpu_count() or 2) - 1)) if on_gpu else 1
    deadline = time.monotonic() + time_budget_s if time_budget_s else None
    opts = TuneOptions(trials=trials, seed=seed, workers=workers, storage=make_storage(storage_url),
                       deadline=deadline, device=device)
    db = TunedDB(db_path)
    with CompilePool(workers) as pool:
        opts.pool = pool
        results = _tune_buckets(buckets, db, gpu, opts, resume=resume, refresh=refresh, progress=progress)
    where = f"cuda:{os.environ.get('CUDA_VISIBLE_DEVICES', '0')}" if on_gpu else "interpreter"
    for r in results:
        r.device = where
    return results


def _elsewhere(tuner: BucketTuner, gpu, opts: TuneOptions, *, first_pass: bool) -> str | None:
    """Why a worker sharing its studies leaves this bucket: committed by another worker
    with this run's trials spent ("tuned by ..."), or (first pass only) running on
    another one ("later")."""
    study = _fleet.find_study(study_name(gpu, tuner.key), opts.storage)
    if study is None:
        return None
    who = _fleet.committed_by(study)
    if who and who != _fleet.worker_id() and spent(study) >= opts.trials:
        return f"tuned by {who}"
    if first_pass and _fleet.busy_elsewhere(study):
        return "later"
    return None


def _tune_buckets(buckets, db, gpu, opts: TuneOptions, *, resume: bool, refresh: bool = False,
                  progress: bool) -> list[BucketResult]:
    """Each bucket in turn. Workers that share their studies (a storage) skip the buckets
    another one committed and come back, after the others, to those another one runs
    (:mod:`._fleet`)."""
    bars = _Bars(len(buckets), opts, progress)
    results, later = [], []
    out_of_time = False  # a bucket ended past the deadline: the rest are not started
    try:
        for first_pass, todo in ((True, buckets), (False, later)):
            for bucket in todo:
                if out_of_time:
                    results.append(BucketResult(bucket, None, skipped=True, why=NOT_REACHED))
                    bars.done()
                    continue
                kind = WinnersTuner if bucket.op == "bwd" else BucketTuner
                tuner = kind(bucket if opts.device.startswith("cuda") else bucket.tiny(), db, gpu, opts)
                if (resume or refresh) and _is_done(db, tuner, refresh=refresh):
                    row = db.winner(tuner.key)
                    results.append(BucketResult(tuner.bucket, tuner.key, None, row["time_ms"], row.get("baseline_ms"),
                                                row.get("trials") or 0, skipped=True, why="kept"))
                    bars.done()
                    continue
                why = _elsewhere(tuner, gpu, opts, first_pass=first_pass) if opts.storage is not None else None
                if why == "later":
                    later.append(bucket)
                    continue
                if why is not None:
                    results.append(BucketResult(tuner.bucket, tuner.key, skipped=True, why=why))
                    bars.done()
                    continue
                result = tuner.run(bars.bucket(tuner.bucket.label()))
                if result.cut and result.config is None:  # cut before any candidate was timed
                    result.skipped, result.why = True, "cut: time budget"
                results.append(result)
                bars.done(result)
                out_of_time = opts.deadline is not None and time.monotonic() > opts.deadline
    finally:
        bars.close()
    return results


class _Bars:
    """Progress a person can watch (tqdm; silent where stderr is no terminal): buckets done
    of the run's, the best time so far and the time left in the budget; below it, the
    bucket being tuned, its trials and its best."""

    def __init__(self, total: int, opts: TuneOptions, progress: bool):
        self.opts, self.best, self.inner = opts, None, None
        self.outer = None
        if progress:
            from tqdm.auto import tqdm

            self.tqdm = tqdm
            self.outer = tqdm(total=total, desc="buckets", position=0, leave=True, dynamic_ncols=True,
                              disable=None, unit="bucket")

    def bucket(self, label: str):
        if self.outer is None:
            return None
        self._postfix()
        self.inner = self.tqdm(total=self.opts.trials, desc=label, position=1, leave=False, dynamic_ncols=True,
                               disable=None, unit="trial")
        return self.inner

    def done(self, result: BucketResult | None = None) -> None:
        if self.inner is not None:
            self.inner.close()
            self.inner = None
        if result is not None and result.time_ms is not None:
            self.best = result.time_ms if self.best is None else min(self.best, result.time_ms)
        if self.outer is not None:
            self.outer.update(1)
            self._postfix()

    def _postfix(self) -> None:
        parts = []
        if self.opts.deadline is not None:
            parts.append(f"{max(0.0, self.opts.deadline - time.monotonic()):.0f} s left")
        if self.best is not None:
            parts.append(f"fastest winner {self.best:.4f} ms")
        self.outer.set_postfix_str(", ".join(parts))

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()
        if self.outer is not None:
            self.outer.close()


def _gpu_worker(args: tuple) -> list[BucketResult]:
    index, kwargs = args
    os.environ["CUDA_VISIBLE_DEVICES"] = str(index)
    return tune_on_device(**kwargs)


def tune(
    buckets: list[Bucket],
    *,
    db_path: str | Path | None = None,
    trials: int = 24,
    seed: int = 0,
    time_budget_s: float | None = None,
    resume: bool = False,
    refresh: bool = False,
    storage_url: str | None = None,
    gpus: int = 1,
    workers: int | None = None,
    progress: bool = True,
) -> TuneReport:
    """Tune every bucket; with ``gpus > 1``, one worker process per GPU, buckets dealt round-robin.

    ``resume`` skips buckets whose winner still runs the kernels it was timed with;
    ``refresh`` does too, except those whose winner was found in an older search space,
    which are tuned again with their winner among the seeds.

    Without CUDA the same pipeline runs through Triton's interpreter on shrunk buckets.
    """
    t0 = time.monotonic()
    db_path = Path(db_path) if db_path else user_db_path()
    on_gpu = torch.cuda.is_available() and not interpreting()
    kwargs = dict(db_path=db_path, trials=trials, seed=seed, time_budget_s=time_budget_s, resume=resume,
                  refresh=refresh, storage_url=storage_url, workers=workers, progress=progress)
    TunedDB(db_path)  # create and migrate once, before workers race to
    if gpus <= 1:
        results = tune_on_device(buckets, **kwargs)
    else:
        available = torch.cuda.device_count() if on_gpu else gpus
        if gpus > available:
            raise ValueError(f"--gpus {gpus} but only {available} CUDA devices are visible")
        per_gpu_workers = max(1, ((os.cpu_count() or 2) - 1) // gpus) if on_gpu else 1
        jobs = [(i, {**kwargs, "buckets": buckets[i::gpus], "workers": workers or per_gpu_workers,
                     "progress": False}) for i in range(gpus)]
        # Not a multiprocessing.Pool: its daemonic workers could not start compile workers.
        with cf.ProcessPoolExecutor(max_workers=gpus, mp_context=mp.get_context("spawn")) as pool:
            parts = list(pool.map(_gpu_worker, jobs))
        for index, part in enumerate(parts):
            for r in part:  # in the interpreter every worker says "interpreter"; name the worker
                r.device = r.device if on_gpu else f"worker {index}"
        results = [r for part in parts for r in part]
    name = torch.cuda.get_device_name() if on_gpu else "Triton interpreter (CPU)"
    return TuneReport(results, name, not on_gpu, time.monotonic() - t0)


def trials_label(trials: int, cut: bool) -> str:
    """A study's trial count, marked where the time budget cut it short."""
    return f"{trials} (cut)" if cut else str(trials)


def summary_rows(report: TuneReport) -> list[tuple[str, ...]]:
    rows = []
    for r in report.results:
        rows.append((
            r.bucket.label(),
            r.config.key() if r.config else (f"({r.why or 'skipped'})" if r.skipped else "(none passed)"),
            f"{r.time_ms:.4f}" if r.time_ms else "-",
            f"{r.baseline_ms:.4f}" if r.baseline_ms else "-",
            f"{r.speedup:.2f}x" if r.speedup else "-",
            trials_label(r.trials, r.cut),
            r.device,
        ))
    return rows


__all__ = ["TuneReport", "journal_path", "make_storage", "study_name", "summary_rows", "tune", "tune_on_device"]
