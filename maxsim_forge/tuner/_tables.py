"""Exhaustive tables: the time (or the failure) of every valid config of one bucket on one
GPU, as ``benchmarks/collect_exhaustive.py`` gathers them and :mod:`._replay` replays them.
Stored as JSON, one row per line; everything is checked on load.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from .._keys import GpuInfo
from ..codegen import ConfigError, KernelConfig
from ._compile import COMPILE_FAILED, MISMATCH, OK, OUT_OF_RESOURCES, RUNTIME_FAILED, TIMEOUT
from ._presets import Bucket
from ._space import SPACE

FORMAT = "maxsim-forge exhaustive table"
VERSION = 1
STATUSES = (OK, COMPILE_FAILED, RUNTIME_FAILED, MISMATCH, OUT_OF_RESOURCES, TIMEOUT)
_KEYS = ("format", "version", "bucket", "gpu", "versions", "date", "space_hash", "complete", "note", "rows")
_GPU_TYPES = {"name": str, "cc": str, "sm_count": int, "smem_limit": int}


@dataclass(frozen=True)
class TableRow:
    config: KernelConfig
    status: str
    time_ms: float | None  # the tuner's time for ``ok``, else None


@dataclass
class ExhaustiveTable:
    """Every valid config of one bucket timed on one GPU (``complete`` once all are)."""

    bucket: Bucket
    gpu: GpuInfo
    versions: dict[str, str]
    date: str
    space_hash: str
    rows: list[TableRow] = field(default_factory=list)
    complete: bool = False
    note: str = ""  # where the table came from, when not from collect_exhaustive.py

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "bucket": dataclasses.asdict(self.bucket),
                "gpu": dataclasses.asdict(self.gpu), "versions": dict(self.versions), "date": self.date,
                "space_hash": self.space_hash, "complete": self.complete, "note": self.note,
                "rows": [{"config": r.config.to_dict(), "status": r.status, "time_ms": r.time_ms} for r in self.rows]}

    def save(self, path: str | Path) -> None:
        """Write the table as JSON, atomically (a run cut mid-write leaves the old file)."""
        doc = self.to_json()
        rows = ",\n".join("  " + json.dumps(r) for r in doc.pop("rows"))  # one row a line
        path = Path(path)
        tmp = path.with_name(path.name + ".part")
        tmp.write_text(json.dumps(doc, indent=1)[:-2] + f',\n "rows": [\n{rows}\n ]\n}}\n')
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> ExhaustiveTable:
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"exhaustive table {path} is not JSON: {exc}") from None
        return cls.from_json(doc, source=str(path))

    @classmethod
    def from_json(cls, doc: object, *, source: str = "exhaustive table") -> ExhaustiveTable:
        """A table from its JSON form; anything malformed raises ValueError naming the field."""
        need = functools.partial(_need, source)
        need(isinstance(doc, dict) and doc.get("format") == FORMAT,
             f"not an exhaustive table: expected an object with format {FORMAT!r}")
        need(doc.get("version") == VERSION, f"version {doc.get('version')!r}; this package reads version {VERSION}")
        need(set(doc) == set(_KEYS), f"fields {sorted(doc)}; accepted: exactly {sorted(_KEYS)}")
        try:
            bucket = Bucket(**doc["bucket"])
            bucket.spec.validate()
        except (TypeError, ConfigError) as exc:
            raise ValueError(f"{source}: bucket {doc['bucket']!r}: {exc}; fields: "
                             f"{', '.join(Bucket.__dataclass_fields__)}") from None
        sizes = {n: getattr(bucket, n) for n in ("dim", "nq", "lq", "nb", "ld")}
        need(all(type(v) is int and v > 0 for v in sizes.values()),
             f"bucket sizes {sizes}; accepted: positive integers")
        gpu = doc["gpu"]
        need(isinstance(gpu, dict) and {k: type(v) for k, v in gpu.items()} == _GPU_TYPES,
             f"gpu {gpu!r}; accepted: name and cc (strings), sm_count and smem_limit (integers)")
        need(isinstance(doc["versions"], dict) and all(type(v) is str for v in doc["versions"].values()),
             f"versions {doc['versions']!r}; accepted: an object of strings")
        need(type(doc["date"]) is str and re.fullmatch(r"\d{4}-\d{2}-\d{2}", doc["date"]),
             f"date {doc['date']!r}; accepted: YYYY-MM-DD")
        need(type(doc["complete"]) is bool and type(doc["space_hash"]) is str and type(doc["note"]) is str,
             "complete must be a boolean, space_hash and note strings")
        return cls(bucket, GpuInfo(**gpu), dict(doc["versions"]), doc["date"], doc["space_hash"],
                   _rows(doc["rows"], source), doc["complete"], doc["note"])


def _need(source: str, ok: object, what: str) -> None:
    if not ok:
        raise ValueError(f"{source}: {what}")


def _rows(raw: object, source: str) -> list[TableRow]:
    need = functools.partial(_need, source)
    need(isinstance(raw, list) and raw, "rows must be a non-empty list")
    rows, seen = [], set()
    for i, r in enumerate(raw):
        need(isinstance(r, dict) and set(r) == {"config", "status", "time_ms"},
             f"row {i}: {r!r}; accepted: an object with exactly config, status, time_ms")
        try:
            cfg = KernelConfig.from_dict(r["config"])
        except (ConfigError, TypeError, AttributeError) as exc:
            raise ValueError(f"{source}: row {i}: config {r['config']!r}: {exc}") from None
        for name, value in cfg.to_dict().items():  # exact types: True is no 1
            need(any(type(v) is type(value) and v == value for v in SPACE[name]),
                 f"row {i}: {name}={value!r}; accepted: {', '.join(map(repr, SPACE[name]))}")
        need(r["status"] in STATUSES, f"row {i}: status {r['status']!r}; accepted: {', '.join(STATUSES)}")
        t = r["time_ms"]
        timed = type(t) in (int, float) and math.isfinite(t) and t > 0
        need((r["status"] == OK) == timed and (timed or t is None), f"row {i}: status {r['status']!r} with "
             f"time_ms {t!r}; accepted: a positive time for 'ok', null for a failure")
        need(cfg not in seen, f"row {i}: config {cfg.key()} appears twice")
        seen.add(cfg)
        rows.append(TableRow(cfg, r["status"], float(t) if timed else None))
    return rows
