"""Where a call's config comes from: user DB, shipped DB, a stale row of the bucket,
nearest bucket, same arch, heuristic.

The databases are read once, into dictionaries; a bucket's decision is then memoised
by the dispatcher, so a call costs a dictionary lookup. A database that is missing,
corrupt or from a newer schema is reported once and skipped; one that a writer holds
past a short wait is reported once and read again at a later lookup (at most every
:data:`RETRY_S` seconds), and the routes decided meanwhile are decided again then. A row
that breaks the schema is reported once and skipped; the rest of its database serves.

A row whose kernels this version no longer generates (another template version) is
stale: reported once, it still serves its own bucket, after the current rows of that
bucket and before any neighbour or the heuristic, when its config validates on this
device (source ``stale-db``); neighbours take current rows only.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict
from pathlib import Path

from .._keys import BucketKey, Entry, GpuInfo, nearest, query_tile_limit
from ..codegen import (
    ConfigError, KernelConfig, KernelSpec, WinnersConfig, check_winners, is_current, validate, winners_config,
    winners_config_of, winners_smem,
)
from ..tuned_db import LockedError, TunedDBError, load_winners, shipped_db_paths, user_db_path
from ._heuristics import default_config

log = logging.getLogger("maxsim_forge")

USER_DB, SHIPPED_DB, STALE, NEAREST, SAME_ARCH, HEURISTIC, TORCH = (
    "user-db", "shipped-db", "stale-db", "nearest-bucket", "same-arch", "heuristic", "torch-fallback",
)
SOURCES = (USER_DB, SHIPPED_DB, STALE, NEAREST, SAME_ARCH, HEURISTIC, TORCH)
# A lookup waits this long for a writer that holds a database, then reads it again at a
# later lookup, at most this often.
LOCK_WAIT_S = 0.3
RETRY_S = 2.0


class Lookup:
    """The loaded databases, indexed for the lookup order of DESIGN.md."""

    def __init__(self, user_path: Path | None = None, shipped_paths: list[Path] | None = None):
        self._user_path = user_path
        self._shipped_paths = shipped_paths
        self._lock = threading.RLock()
        self._loaded = False
        # Rows in lookup order (the user's, then the shipped ones): per GPU, family
        # (layout, dtype, precision, dim, codes), size buckets and docs; per GPU and family; per
        # compute capability and family.
        self.exact: dict[tuple, list[Entry]] = defaultdict(list)
        self.family: dict[tuple, list[Entry]] = defaultdict(list)
        self.arch: dict[tuple, list[Entry]] = defaultdict(list)
        self.reports: list[str] = []
        self._current: dict[Entry, bool] = {}
        # The backward's decided winners configs, per (spec, bucket key): see _grad.winners_decision.
        self.winners_memo: dict[tuple, tuple] = {}
        # The backward's launch plans per call shape (see _grad._plan), at most PLAN_LIMIT.
        self.backward_plans: dict[tuple, object] = {}
        self._sources: list[tuple[Path, str, list[Entry] | None]] = []  # None: not read yet (locked)
        self._retry_at = 0.0
        self.generation = 0  # bumped when a database read late joins the index

    # ---- loading (once)
    def load(self) -> Lookup:
        if self._loaded:
            return self
        with self._lock:
            if self._loaded:
                return self
            user = self._user_path if self._user_path is not None else user_db_path()
            explicit = self._user_path is not None or bool(os.environ.get("MAXSIM_FORGE_DB"))
            shipped = self._shipped_paths if self._shipped_paths is not None else shipped_db_paths()
            for path, source, report_missing in ((user, USER_DB, explicit),
                                                 *((p, SHIPPED_DB, True) for p in shipped)):
                self._sources.append((Path(path), source, self._load_one(Path(path), source, report_missing)))
            self._index()
            self._retry_at = time.monotonic() + RETRY_S
            self._loaded = True
        return self

    @property
    def pending(self) -> bool:
        """Some database was held by a writer when it was read, and is read again later."""
        return any(entries is None for _, _, entries in self._sources)

    def changed_since(self, generation: int) -> bool:
        """Whether a database read late (see :attr:`pending`) joined the index since
        ``generation``; tries the pending ones again when :data:`RETRY_S` has passed."""
        self.load()
        if self.pending and time.monotonic() >= self._retry_at:
            with self._lock:
                self._retry()
        return self.generation != generation

    def _retry(self) -> None:
        if not self.pending or time.monotonic() < self._retry_at:
            return
        joined = False
        for i, (path, source, entries) in enumerate(self._sources):
            if entries is None:
                entries = self._load_one(path, source, True, retry=True)
                self._sources[i] = (path, source, entries)
                joined |= entries is not None
        if joined:
            self._index()
            self.generation += 1
        self._retry_at = time.monotonic() + RETRY_S

    def _report(self, message: str) -> None:
        self.reports.append(message)
        log.warning("maxsim-forge: %s", message)

    def _load_one(self, path: Path, source: str, report_missing: bool, *, retry: bool = False) -> list[Entry] | None:
        """The entries of one database; [] when it cannot serve, None while a writer holds it."""
        if not path.exists():
            if report_missing:
                self._report(f"{source} {path} is missing; using the next source")
            return []
        try:
            # Shipped files may sit in a read-only folder: take no locks, unless a WAL is beside them.
            immutable = source == SHIPPED_DB and not Path(f"{path}-wal").exists()
            rows, bad = load_winners(path, immutable=immutable, wait_s=LOCK_WAIT_S)
        except LockedError:
            if not retry:
                self._report(f"{source} {path} is held by a writer; using the next source until it is "
                             "free (read again at a later lookup)")
            return None
        except TunedDBError as exc:
            self._report(f"{source} cannot be read ({exc}); using the next source")
            return []
        for exc in bad:
            self._report(f"{source} {exc}; the row is skipped, the rest of the database serves")
        return [_entry(row, path, source) for row in rows]

    def _index(self) -> None:
        for table in (self.exact, self.family, self.arch):
            table.clear()
        for _, _, entries in self._sources:
            for entry in entries or ():
                row = entry.row
                family = (row["layout"], row["dtype"], row["precision"], row["dim"], row.get("codes", "none"),
                          row.get("op", "fwd"))
                self.exact[(entry.gpu, *family, entry.sizes, entry.docs)].append(entry)
                self.family[(entry.gpu, *family)].append(entry)
                self.arch[(entry.row["cc"], *family)].append(entry)

    def _is_current(self, entry: Entry) -> bool:
        """The entry still runs the kernels it was timed with (a stale one is reported once)."""
        current = self._current.get(entry)
        if current is None:
            path, layout, dtype, dim, precision, khash, thash, codes, op = entry.stamp
            current = is_current({"layout": layout, "dtype": dtype, "dim": dim, "precision": precision,
                                  "codes": codes, "op": op, "config": entry.row["config"] if op == "bwd"
                                  else entry.config, "kernel_hash": khash, "template_hash": thash})
            self._current[entry] = current
            if not current:
                self._report(f"{entry.source} {path}: the row for {layout}/{dtype}/dim{dim} {entry.config.key()} "
                             "was tuned with another template version: stale, it serves its own bucket only "
                             "until tuned again")
        return current

    # ---- deciding
    def decide(self, spec: KernelSpec, key: BucketKey, gpu: GpuInfo, sizes: dict) -> tuple[KernelConfig, str]:
        """The config for this call's bucket and where it came from (``sizes``: the exact
        ``nq, lq, nb, ld`` of the call)."""
        self.load()
        if self.pending:
            self.changed_since(self.generation)  # a database held by a writer: try it again
        family = (key.layout, key.dtype, key.precision, key.dim, key.codes, key.op)
        want = key.sizes
        # A query set's neighbour has no query tile taller than the set's folded rows: a
        # set that fits one tile takes the one-tile store (BENCHMARKS.md).
        tallest = query_tile_limit(nq=sizes["nq"], lq=sizes["lq"])
        entries = self.family.get((gpu.name, *family), ())

        def own(entry: Entry) -> bool:
            return entry.is_bucket(want, key.docs) and _fits(spec, entry.config, gpu)

        def current(entry: Entry) -> bool:
            return self._is_current(entry) and _fits(spec, entry.config, gpu)

        # The bucket's current rows (from their own source), then its stale ones, then the
        # nearest current row on this GPU, then one of the same compute capability.
        here = next(nearest(entries, want, docs=key.docs, usable=lambda e: own(e) and self._is_current(e)), None)
        if here is not None:
            return here.config, here.source
        stale = next(nearest(entries, want, docs=key.docs, usable=own), None)
        if stale is not None:
            return stale.config, STALE
        near = next(nearest(entries, want, docs=key.docs, tallest=tallest, usable=current), None)
        if near is not None:
            return near.config, NEAREST
        sibling = next(nearest(self.arch.get((gpu.cc, *family), ()), want, docs=key.docs, tallest=tallest,
                               usable=current, own_bucket=False), None)
        if sibling is not None:
            return sibling.config, SAME_ARCH
        return default_config(spec, **sizes, sm_count=gpu.sm_count, smem_limit=gpu.smem_limit), HEURISTIC


def decide_winners(lookup: Lookup, spec: KernelSpec, key: BucketKey, gpu: GpuInfo,
                   sizes: dict) -> tuple[WinnersConfig, str]:
    """The backward's winners-kernel config for a call's bucket (``key`` with op "bwd") and
    where it came from, in the forward's order: this bucket's current row, its stale
    row, the nearest current row on this GPU, one of the same compute capability, the
    heuristic."""
    lookup.load()
    family = (key.layout, key.dtype, key.precision, key.dim, key.codes, "bwd")
    want = key.sizes

    def fits(entry: Entry) -> bool:
        try:
            cfg = winners_config_of(entry.row["config"])
            check_winners(spec, cfg)
        except ConfigError:
            return False
        return winners_smem(spec, cfg) <= gpu.smem_limit

    entries = lookup.family.get((gpu.name, *family), ())
    for usable, source in (
        (lambda e: e.is_bucket(want, key.docs) and fits(e) and lookup._is_current(e), None),
        (lambda e: e.is_bucket(want, key.docs) and fits(e), STALE),
        (lambda e: fits(e) and lookup._is_current(e), NEAREST),
    ):
        hit = next(nearest(entries, want, docs=key.docs, usable=usable), None)
        if hit is not None:
            return winners_config_of(hit.row["config"]), source or hit.source
    sibling = next(nearest(lookup.arch.get((gpu.cc, *family), ()), want, docs=key.docs, own_bucket=False,
                           usable=lambda e: fits(e) and lookup._is_current(e)), None)
    if sibling is not None:
        return winners_config_of(sibling.row["config"]), SAME_ARCH
    rows = sizes["lq"] if spec.layout == "pairs" else sizes["nq"] * sizes["lq"]
    return winners_config(spec, rows=rows, ld=sizes["ld"] or 64), HEURISTIC


def _entry(row: dict, path: Path, source: str) -> Entry:
    stamp = (str(path), row["layout"], row["dtype"], row["dim"], row["precision"],
             row.get("kernel_hash") or "", row.get("template_hash") or "", row.get("codes", "none"),
             row.get("op", "fwd"))
    return Entry(sizes=BucketKey.from_row(row).sizes, config=KernelConfig.from_dict(row["config"]),
                 docs=row.get("docs") or "", source=source, gpu=row["gpu"], stamp=stamp, row=row)


def _fits(spec: KernelSpec, cfg: KernelConfig, gpu: GpuInfo) -> bool:
    try:
        validate(spec, cfg, smem_limit=gpu.smem_limit)
    except ConfigError:
        return False
    return True
