"""Where a call's config comes from: user DB, shipped DB, nearest bucket, same arch, heuristic.

The databases are read once, into dictionaries; a bucket's decision is then memoised
by the dispatcher, so a call costs a dictionary lookup. A database that is missing,
corrupt or from a newer schema is reported once and skipped; a row whose kernels this
version no longer generates (another template version) is reported once and skipped
when a lookup reaches it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections import defaultdict
from pathlib import Path

from .._keys import BucketKey, Entry, GpuInfo, nearest, query_tile_limit
from ..codegen import ConfigError, KernelConfig, KernelSpec, is_current, validate
from ..tuned_db import SchemaError, open_db, read_winners, shipped_db_paths, user_db_path
from ._heuristics import default_config

log = logging.getLogger("maxsim_forge")

USER_DB, SHIPPED_DB, NEAREST, SAME_ARCH, HEURISTIC, TORCH = (
    "user-db", "shipped-db", "nearest-bucket", "same-arch", "heuristic", "torch-fallback",
)
SOURCES = (USER_DB, SHIPPED_DB, NEAREST, SAME_ARCH, HEURISTIC, TORCH)


class Lookup:
    """The loaded databases, indexed for the lookup order of DESIGN.md."""

    def __init__(self, user_path: Path | None = None, shipped_paths: list[Path] | None = None):
        self._user_path = user_path
        self._shipped_paths = shipped_paths
        self._lock = threading.Lock()
        self._loaded = False
        # Rows in lookup order (the user's, then the shipped ones): per GPU, family
        # (layout, dtype, precision, dim), size buckets and docs; per GPU and family; per
        # compute capability and family.
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
            entry = Entry(sizes=BucketKey.from_row(row).sizes, config=cfg, docs=row.get("docs") or "",
                          source=source, gpu=row["gpu"], stamp=stamp)
            family = (row["layout"], row["dtype"], row["precision"], row["dim"])
            self.exact[(row["gpu"], *family, entry.sizes, entry.docs)].append(entry)
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
                self._report(f"{entry.source} {path}: the row for {layout}/{dtype}/dim{dim} "
                             f"{entry.config.key()} was tuned with another template version; ignored")
        return current and _fits(spec, entry.config, gpu)

    # ---- deciding
    def decide(self, spec: KernelSpec, key: BucketKey, gpu: GpuInfo, sizes: dict) -> tuple[KernelConfig, str]:
        """The config for this call's bucket and where it came from (``sizes``: the exact
        ``nq, lq, nb, ld`` of the call)."""
        self.load()
        family = (key.layout, key.dtype, key.precision, key.dim)
        want = key.sizes
        # A query set's neighbour has no query tile taller than the set's folded rows: a
        # set that fits one tile takes the one-tile store (BENCHMARKS.md).
        tallest = query_tile_limit(nq=sizes["nq"], lq=sizes["lq"])

        def usable(entry: Entry) -> bool:
            return self._usable(entry, spec, gpu)

        # The bucket itself (from its own source), else the nearest on this GPU.
        here = next(nearest(self.family.get((gpu.name, *family), ()), want, docs=key.docs, tallest=tallest,
                            usable=usable), None)
        if here is not None:
            return here.config, here.source if here.is_bucket(want, key.docs) else NEAREST
        sibling = next(nearest(self.arch.get((gpu.cc, *family), ()), want, docs=key.docs, tallest=tallest,
                               usable=usable, own_bucket=False), None)
        if sibling is not None:
            return sibling.config, SAME_ARCH
        return default_config(spec, **sizes, sm_count=gpu.sm_count, smem_limit=gpu.smem_limit), HEURISTIC


def _fits(spec: KernelSpec, cfg: KernelConfig, gpu: GpuInfo) -> bool:
    try:
        validate(spec, cfg, smem_limit=gpu.smem_limit)
    except ConfigError:
        return False
    return True
