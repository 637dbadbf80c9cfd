"""Tuning with many workers that share one Optuna storage (a PostgreSQL server, or any
database SQLAlchemy reaches): the storage, each trial's heartbeat, and which buckets a
worker takes.

- The storage records a heartbeat for every running trial. A worker that dies (SIGKILL,
  a lost machine) stops beating; once its trials' heartbeats are older than the grace
  period, the next worker that looks at the study marks them failed, and
  :class:`optuna.storages.RetryFailedTrialCallback` enqueues each again, with its
  config and a ``failed_trial`` attribute that names the trial it retries; the next
  proposal of any worker is that retry.
- Buckets are taken in order; a bucket whose study another live worker is running is
  left for later, one whose study has reached its trial target and been committed by
  another worker is skipped, and after the first pass a worker joins the studies still
  unfinished (those of a dead worker, or those still running), so no bucket waits on one
  worker while others are idle and none is tuned twice.
- Winners: every worker writes the winners it commits into its own SQLite database
  (``--db``); ``maxsim-forge db merge`` gathers them, keeping per bucket the fastest
  current winner. A worker that finishes a study marks it committed (``committed_by``),
  so another that reaches it later does not time it again.
"""

from __future__ import annotations

import os
import socket
import threading
import warnings
from contextlib import contextmanager

import logging

import optuna
from optuna.storages import RetryFailedTrialCallback
from optuna.trial import TrialState

log = logging.getLogger("maxsim_forge.tuner")

# Seconds between a running trial's heartbeats, and the silence after which it is taken
# for dead (failed and retried); MAXSIM_FORGE_HEARTBEAT_S overrides the interval.
HEARTBEAT_S = 30
GRACE_FACTOR = 4
# How often a failed (dead) trial is retried before it counts as failed for good.
MAX_RETRY = 2


def worker_id() -> str:
    """This process as trials record it: host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


def heartbeat_s() -> int:
    raw = os.environ.get("MAXSIM_FORGE_HEARTBEAT_S", "")
    if not raw:
        return HEARTBEAT_S
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"MAXSIM_FORGE_HEARTBEAT_S={raw!r}; accepted: a whole number of seconds >= 1")
    return value


def _with_driver(url: str) -> str:
    """``postgresql://`` through psycopg 3 when psycopg2 is absent (the ``[fleet]`` extra)."""
    if not url.startswith(("postgresql://", "postgres://")):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg2") is not None:
        return url
    if importlib.util.find_spec("psycopg") is None:
        raise ValueError(f"storage {url.split('@')[-1]!r} is PostgreSQL, whose driver is not installed: "
                         "pip install 'maxsim-forge[fleet]' (psycopg)")
    return "postgresql+psycopg://" + url.split("://", 1)[1]


def rdb_storage(url: str, *, heartbeat: int | None = None) -> optuna.storages.RDBStorage:
    """A shared storage whose running trials beat, and whose dead ones are retried
    (Optuna 4.9 renamed the retry callback; both names are taken)."""
    beat = heartbeat or heartbeat_s()
    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        callback = {"heartbeat_stale_trial_callback": retry(max_retry=MAX_RETRY)} if retry is not None else \
            {"failed_trial_callback": RetryFailedTrialCallback(max_retry=MAX_RETRY)}
        return optuna.storages.RDBStorage(_with_driver(url), engine_kwargs={"pool_pre_ping": True},
                                          heartbeat_interval=beat, grace_period=GRACE_FACTOR * beat, **callback)


def beats(study: optuna.Study) -> bool:
    """The study's storage records heartbeats (an RDB storage made by :func:`rdb_storage`)."""
    interval = getattr(study._storage, "get_heartbeat_interval", None)
    return interval is not None and interval() is not None


@contextmanager
def heartbeat(study: optuna.Study, trials: list[optuna.Trial]):
    """Record the trials' heartbeats now and every interval until the block ends."""
    if not beats(study) or not trials:
        yield
        return
    storage, interval = study._storage, study._storage.get_heartbeat_interval()
    ids = [t._trial_id for t in trials]
    for trial_id in ids:
        storage.record_heartbeat(trial_id)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            for trial_id in ids:
                try:
                    storage.record_heartbeat(trial_id)
                except Exception as exc:  # noqa: BLE001 - a missed beat is retried at the next interval
                    log.warning("maxsim-forge: heartbeat of trial %s not recorded (%s); retrying", trial_id, exc)

    thread = threading.Thread(target=beat, name="maxsim-forge-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def ask(study: optuna.Study, n: int) -> list[optuna.Trial]:
    """``n`` new trials, each marked with this worker. Optuna warns that heartbeats are for
    ``Study.optimize``; here :func:`heartbeat` beats for the trials asked and told by hand."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
        trials = [study.ask() for _ in range(n)]
    for trial in trials:
        trial.set_user_attr("worker", worker_id())
    return trials


def fail_dead_trials(study: optuna.Study) -> None:
    """Mark failed (and so retried) the running trials whose worker stopped beating."""
    if beats(study):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)


def find_study(name: str, storage) -> optuna.Study | None:
    """The study of this name in a shared storage, or None where there is none yet."""
    if storage is None or not hasattr(storage, "get_study_id_from_name"):
        return None
    try:
        storage.get_study_id_from_name(name)
    except KeyError:
        return None
    return optuna.load_study(study_name=name, storage=storage)


def busy_elsewhere(study: optuna.Study) -> bool:
    """Another worker runs a trial of this study (its heartbeat not yet stale)."""
    fail_dead_trials(study)
    me = worker_id()
    return any(t.user_attrs.get("worker") not in (None, me)
               for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def committed_by(study: optuna.Study) -> str | None:
    """The worker that committed this study's winner, if one did."""
    return study.user_attrs.get("committed_by")


def retried(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that retry one whose worker died (each names it in ``failed_trial``)."""
    return [t for t in study.get_trials(deepcopy=False) if "failed_trial" in t.system_attrs]


__all__ = ["HEARTBEAT_S", "ask", "beats", "busy_elsewhere", "committed_by", "fail_dead_trials", "find_study", "heartbeat",
           "heartbeat_s", "rdb_storage", "retried", "worker_id"]
