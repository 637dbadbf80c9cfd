"""Where a call's config comes from: user DB, shipped DB, nearest bucket, same arch, heuristic.

The databases are read once, into dictionaries; a bucket's decision is then memoised
by the dispatcher, so a call costs a dictionary lookup. A database that is missing,
corrupt or from a newer schema is reported once and skipped; a row whose kernels this
version no longer generates (another template version) is reported once and skipped
when a lookup reaches it.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from ..codegen import ConfigError, KernelConfig, KernelSpec, is_current, next_pow2, validate
from ..tuned_db import BucketKey, SchemaError, open_db, read_winners, shipped_db_paths, user_db_path
from ._heuristics import default_config
from ._keys import GpuInfo

log = logging.getLogger("maxsim_forge")

USER_DB, SHIPPED_DB, NEAREST, SAME_ARCH, HEURISTIC, TORCH = (
    "user-db", "shipped-db", "nearest-bucket", "same-arch", "heuristic", "torch-fallback",
)
SOURCES = (USER_DB, SHIPPED_DB, NEAREST, SAME_ARCH, HEURISTIC, TORCH)
_BUCKETS = ("nq_bucket", "lq_bucket", "ld_bucket", "nb_bucket")


@dataclass(frozen=True)
class Entry:
    buckets: tuple[int, int, int, int]
    config: KernelConfig
    source: str
    gpu: str
    docs: str = "full"
    # What the row was tuned with: codegen.is_current judges it when a lookup reaches it.
    stamp: tuple = ()


def bucket_distance(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    """Between two (nq, lq, ld, nb) buckets: L1 in log2 space; doc and query lengths
    weigh more than counts."""
    weights = (1.0, 2.0, 2.0, 1.0)
    return sum(w * abs(math.log2(max(x, 1)) - math.log2(max(y, 1))) for w, x, y in zip(weights, a, b))


def docs_distance(have: str, want: str) -> float:
    """Full docs against ragged ones count as one doubling of the batch apart; a row that
    did not record its docs ("", tuned before the key had them) as half of that."""
    return 0.0 if have == want else 0.5 if have == "" else 1.0


class Lookup:
    """The loaded databases, indexed for the lookup order of DESIGN.md."""

    def __init__(self, user_path: Path | None = None, shipped_paths: list[Path] | None = None):
        self._user_path = user_path
        self._shipped_paths = shipped_paths
        self._lock = threading.Lock()
        self._loaded = False
        # Per GPU and bucket, its rows in lookup order: the user's, then the shipped ones.
        self.exact: dict[tuple, list[Entry]] = defaultdict(list)
        self.family: dict[tuple, list[Entry]] = defaultdict(list)
        self.arch: dict[tuple, list[Entry]] = defaultdict(list)
        self.reports: list[str] = []
        self._current: dict[Entry, bool] = {}

    # ---- loading (once)
    def load(self) -> Lookup:
        if self._loaded:
            return self
        with self._lock:
            if self._loaded:
                return self
            user = self._user_path if self._user_path is not None else user_db_path()
            explicit = self._user_path is not None or bool(os.environ.get("MAXSIM_FORGE_DB"))
            self._load_one(user, USER_DB, report_missing=explicit)
            shipped = self._shipped_paths if self._shipped_paths is not None else shipped_db_paths()
            for path in shipped:
                self._load_one(path, SHIPPED_DB, report_missing=True)
            self._loaded = True
        return self

    def _report(self, message: str) -> None:
        self.reports.append(message)
        log.warning("maxsim-forge: %s", message)

    def _load_one(self, path: Path, source: str, *, report_missing: bool) -> None:
        path = Path(path)
        if not path.exists():
            if report_missing:
                self._report(f"{source} {path} is missing; using the next source")
            return
        try:
            # Shipped files may sit in a read-only folder: take no locks, unless a WAL is beside them.
            immutable = source == SHIPPED_DB and not Path(f"{path}-wal").exists()
            db = open_db(str(path), read_only=True, immutable=immutable)
            rows = read_winners(db)
            db.conn.close()
        except (sqlite3.DatabaseError, SchemaError) as exc:
            self._report(f"{source} {path} cannot be read ({exc}); using the next source")
            return
        for row in rows:
            try:
                cfg = KernelConfig.from_dict(row["config"])
            except (ConfigError, TypeError):
                continue
            stamp = (str(path), row["layout"], row["dtype"], row["dim"], row["precision"],
                     row.get("kernel_hash") or "", row.get("template_hash") or "")
            entry = Entry(tuple(row[b] for b in _BUCKETS), cfg, source, row["gpu"], row.get("docs") or "", stamp)
            family = (row["layout"], row["dtype"], row["precision"], row["dim"])
            self.exact[(row["gpu"], *family, *entry.buckets, entry.docs)].append(entry)
            self.family[(row["gpu"], *family)].append(entry)
            self.arch[(row["cc"], *family)].append(entry)

    def _usable(self, entry: Entry, spec: KernelSpec, gpu: GpuInfo) -> bool:
        """The entry still runs the kernels it was timed with, and fits this device."""
        current = self._current.get(entry)
        if current is None:
            path, layout, dtype, dim, precision, khash, thash = entry.stamp
            current = is_current({"layout": layout, "dtype": dtype, "dim": dim, "precision": precision,
                                  "config": entry.config, "kernel_hash": khash, "template_hash": thash})
            self._current[entry] = current
            if not current:
                self._report(f"{entry.source} {path}: the row for {layout}/{dtype}/d{dim} "
                             f"{entry.config.key()} was tuned with another template version; ignored")
        return current and _fits(spec, entry.config, gpu)

    # ---- deciding
    def decide(self, spec: KernelSpec, key: BucketKey, gpu: GpuInfo, sizes: dict) -> tuple[KernelConfig, str]:
        """The config for this call's bucket and where it came from."""
        self.load()
        family = (key.layout, key.dtype, key.precision, key.dim)
        buckets = (key.nq_bucket, key.lq_bucket, key.ld_bucket, key.nb_bucket)
        # The bucket itself: tuned on docs like these, else by a row that did not record them.
        for docs in (key.docs, ""):
            for entry in self.exact.get((gpu.name, *family, *buckets, docs), ()):
                if self._usable(entry, spec, gpu):
                    return entry.config, entry.source
        # A neighbour has as many queries as the call in kind: one, or a set. A config
        # tuned for one query walks a set one query at a time and cannot fold it. Nor has
        # a set's neighbour a query tile taller than the set's folded rows: it computes
        # padding rows, and a set that fits one tile takes the one-tile store. 2 queries of
        # 32 tokens on an H100 took 0.0571 ms with the 8-query bucket's 256-row persistent
        # tile against 0.0415 ms with the heuristic (BENCHMARKS.md).
        is_set = key.nq_bucket > 1
        tallest = next_pow2(max(sizes["nq"] * sizes["lq"], 1)) if is_set else None
        for pool, source in ((self.family.get((gpu.name, *family), ()), NEAREST),
                             (self.arch.get((gpu.cc, *family), ()), SAME_ARCH)):
            pool = [e for e in pool
                    if (e.buckets[0] > 1) == is_set and (tallest is None or e.config.block_q <= tallest)]
            ranked = sorted(pool, key=lambda e: (bucket_distance(e.buckets, buckets) + docs_distance(e.docs, key.docs),
                                                 e.source != USER_DB))
            for candidate in ranked:
                if self._usable(candidate, spec, gpu):
                    return candidate.config, source
        return default_config(spec, **sizes, sm_count=gpu.sm_count, smem_limit=gpu.smem_limit), HEURISTIC


def _fits(spec: KernelSpec, cfg: KernelConfig, gpu: GpuInfo) -> bool:
    try:
        validate(spec, cfg, smem_limit=gpu.smem_limit)
    except ConfigError:
        return False
    return True
