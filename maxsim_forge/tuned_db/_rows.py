"""The one schema of a winner row, applied to every row read from outside.

Database rows, JSON exports and vLLM config files all pass :func:`check_winner` before a
row is stored or used: every key known, types exact (a bool is no integer, ``2.0`` is no
warp count), the key fields within their choices, ``config`` a JSON object of known knobs
of the right types (``near_best`` a list of such objects). A row that fails raises
:class:`RowError`, which names the file, the row (its key) and the field. A database
reader skips such a row and reports it once (:func:`report_once`); the rest still serves.

Values are checked as far as no version of this package could have written otherwise:
integers SQLite can store, size buckets that are powers of two, knobs within their
domains and a config that ``codegen.validate`` (``check_winners`` for a backward row)
takes for the row's own layout, dtype, dim and codes. Whether a config fits this
device's shared memory and registers is left to where the config is used: those
estimates changed between versions, and another device may have more. A row tuned on
kernels since changed (stale), or found in an older search space, still passes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import threading

from .._keys import BucketKey
from ..codegen import (
    CODES, DTYPES, LAYOUTS, Q_MODES, ConfigError, KernelConfig, KernelSpec, check_winners, validate,
    winners_config_of,
)

log = logging.getLogger("maxsim_forge")

_PRECISIONS = ("native", "tf32", "ieee")
_DOCS = ("", "full", "ragged")
_FLOAT = (int, float)  # JSON writes 1.0 as 1; a bool is still refused

# The key: required (docs and codes may be absent in rows stored before they were recorded).
KEY_FIELDS: dict[str, type | tuple] = {
    "gpu": str, "cc": str, "layout": str, "dtype": str, "precision": str, "dim": int,
    "nq_bucket": int, "lq_bucket": int, "ld_bucket": int, "nb_bucket": int, "docs": str, "codes": str, "op": str,
}
_OPTIONAL_KEYS = ("docs", "codes", "op")
OPS = ("fwd", "bwd")
# Everything else a winner holds: optional (None where a database column is NULL).
VALUE_FIELDS: dict[str, type | tuple] = {
    "config": dict, "time_ms": _FLOAT, "baseline_ms": _FLOAT, "speedup": _FLOAT, "near_best": list,
    "trials": int, "seed": int, "template_hash": str, "created_at": str, "sm_count": int,
    "smem_limit": int, "triton_version": str, "torch_version": str, "package_version": str,
    "kernel_hash": str, "space_hash": str, "space_sizes": str, "cut": int,
}
WINNER_FIELDS = {**KEY_FIELDS, **VALUE_FIELDS}
# Each knob's exact type, from KernelConfig's annotations ("int", "str", "bool").
_KNOB_TYPES = {f.name: {"int": int, "str": str, "bool": bool}[str(f.type)] for f in dataclasses.fields(KernelConfig)}
# SQLite stores integers as signed 64-bit numbers; a larger one cannot be written.
INT64_MIN, INT64_MAX = -2**63, 2**63 - 1
BUCKET_FIELDS = ("nq_bucket", "lq_bucket", "ld_bucket", "nb_bucket")


def _pow2(low: int, high: int):
    return lambda v: low <= v <= high and v & (v - 1) == 0


# Each knob's values as codegen.validate takes them whatever the layout, dim or device
# (unchanged since the first version; a test holds this table to codegen's checks).
_KNOB_VALUES = {
    "block_q": (_pow2(16, 256), "a power of two from 16 to 256"),
    "block_d": (_pow2(16, 256), "a power of two from 16 to 256"),
    "block_k": (_pow2(16, 256), "a power of two from 16 to 256"),
    "num_warps": (lambda v: v in (1, 2, 4, 8, 16), "1, 2, 4, 8, 16"),
    "num_stages": (lambda v: 1 <= v <= 6, "1 to 6"),
    "split_d": (_pow2(1, 64), "a power of two from 1 to 64"),
    "q_mode": (lambda v: v in Q_MODES, ", ".join(map(repr, Q_MODES))),
}
# A device name is part of vLLM file names and of every key: no path, no control characters.
_GPU_REFUSED = re.compile(r"[/\\]|\.\.")


class RowError(ValueError):
    """A winner row that breaks the schema: ``where`` (the file), ``row`` (its key, or its
    position where the key itself is bad) and ``field`` say which value."""

    def __init__(self, where: str, row: str, field: str, why: str):
        self.where, self.row, self.field, self.why = where, row, field, why
        super().__init__(f"{where}: row {row}, field {field}: {why}")


def row_label(row: dict, index: int | None = None) -> str:
    """A row's key as people read it (``GPU padded/fp16/dim128 nq1 lq32 nb1024 ld512``), or
    its position where the key cannot be read."""
    try:
        key = BucketKey.from_row(row)
        if all(type(getattr(key, k)) is t for k, t in KEY_FIELDS.items()) and _gpu_error(key.gpu) is None:
            return f"{key.gpu} {key.label()}"
    except (KeyError, TypeError, AttributeError):
        pass
    return f"#{index}" if index is not None else "(no key)"


def _type_name(accepted) -> str:
    if accepted == _FLOAT:
        return "a number"
    return {int: "an integer", str: "a string", dict: "a JSON object", list: "a JSON list",
            bool: "true or false"}[accepted]


def _shown(value: object) -> str:
    """``value`` as a message quotes it: an integer of many digits by its size."""
    if type(value) is int and abs(value) >= 10**30:
        return f"an integer of {len(str(abs(value)))} digits"
    return repr(value)


def _gpu_error(name: str) -> str | None:
    """Why ``name`` is no device name, or None."""
    if name and not _GPU_REFUSED.search(name) and name.isprintable():
        return None
    return (f"{name!r}; accepted: a device name as vLLM normalises it (such as 'NVIDIA_H100_80GB_HBM3'), "
            "without '/', '\\', '..' or control characters")


def _exact(value: object, accepted) -> bool:
    kinds = accepted if isinstance(accepted, tuple) else (accepted,)
    return type(value) in kinds  # exact: a bool is no int, an int subclass is refused


def check_config(value: object, field: str = "config") -> dict:
    """A config as stored (a JSON object, or its text): known knobs of exact types, each
    within its values (:data:`_KNOB_VALUES`). Returns the object; raises ``ValueError``
    naming the knob (``config.num_warps``)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{field}: is not JSON ({exc.msg} at character {exc.pos})") from None
    if type(value) is not dict:
        raise ValueError(f"{field}: is {type(value).__name__}; accepted: a JSON object of knobs")
    try:
        KernelConfig.from_dict(value)
    except (ConfigError, TypeError) as exc:
        raise ValueError(f"{field}: {exc}") from None
    for name, knob in value.items():
        if type(knob) is not _KNOB_TYPES[name]:
            raise ValueError(f"{field}.{name}: {knob!r} is {type(knob).__name__}; accepted: "
                             f"{_type_name(_KNOB_TYPES[name])}")
        allowed, accepted = _KNOB_VALUES.get(name, (None, ""))
        if allowed is not None and not allowed(knob):
            raise ValueError(f"{field}.{name}: {_shown(knob)}; accepted: {accepted}")
    return value


def _decode(row: dict, name: str) -> object:
    value = row.get(name)
    if name == "near_best" and isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{name}: is not JSON ({exc.msg} at character {exc.pos})") from None
    return value


def _check_fields(row: dict) -> dict:
    out = {}
    unknown = sorted(set(row) - set(WINNER_FIELDS))
    if unknown:
        raise ValueError(f"{unknown[0]}: is no field of a winner; accepted: {', '.join(WINNER_FIELDS)}")
    for name, accepted in WINNER_FIELDS.items():
        if name not in row:
            if name in KEY_FIELDS and name not in _OPTIONAL_KEYS or name == "config":
                raise ValueError(f"{name}: is missing; a winner needs {', '.join(KEY_FIELDS)} and config")
            continue
        value = _decode(row, name)
        if name == "config":
            value = check_config(value)
        elif name == "near_best" and value is not None:
            if type(value) is not list:
                raise ValueError(f"near_best: is {type(value).__name__}; accepted: a JSON list of configs")
            value = [check_config(v, f"near_best[{i}]") for i, v in enumerate(value)]
        elif (value is None and name in KEY_FIELDS) or (value is not None and not _exact(value, accepted)):
            raise ValueError(f"{name}: {value!r} is {type(value).__name__}; accepted: {_type_name(accepted)}")
        elif type(value) is int and not INT64_MIN <= value <= INT64_MAX:
            raise ValueError(f"{name}: {_shown(value)} is outside SQLite's integer range; accepted: "
                             "an integer from -2**63 to 2**63 - 1")
        out[name] = value
    return out


def _check_choices(row: dict) -> None:
    for name, accepted in (("layout", LAYOUTS), ("dtype", DTYPES), ("precision", _PRECISIONS),
                           ("docs", _DOCS), ("codes", CODES), ("op", OPS)):
        if name in row and row[name] not in accepted:
            raise ValueError(f"{name}: {row[name]!r}; accepted: {', '.join(map(repr, accepted))}")
    why = _gpu_error(row["gpu"])
    if why:
        raise ValueError(f"gpu: {why}")
    if row["dim"] < 1:
        raise ValueError(f"dim: {row['dim']}; accepted: a positive integer")
    # A winner was timed on sizes of at least 1, which the runtime buckets to 1, 2, 4, 8, ...
    for name in BUCKET_FIELDS:
        value = row[name]
        if value < 1 or value & (value - 1):
            raise ValueError(f"{name}: {value}; accepted: a power of two >= 1 (1, 2, 4, 8, ...)")
    if row.get("cut") not in (None, 0, 1):
        raise ValueError(f"cut: {row['cut']!r}; accepted: 0 or 1")
    if row.get("trials") is not None and row["trials"] < 0:
        raise ValueError(f"trials: {row['trials']}; accepted: an integer >= 0")
    # A time of 0 would beat every winner timed on a GPU.
    if row.get("time_ms") is not None and not (math.isfinite(row["time_ms"]) and row["time_ms"] > 0):
        raise ValueError(f"time_ms: {row['time_ms']!r}; accepted: a finite number > 0")
    for name in ("baseline_ms", "speedup"):
        value = row.get(name)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name}: {value!r}; accepted: a finite number >= 0")


def _field_of(exc: ConfigError) -> str:
    """The field a codegen error is about: a key field or a knob its message starts with."""
    name = re.match(r"\w*", str(exc)).group()
    if name in KEY_FIELDS:
        return name
    return f"config.{name}" if name in _KNOB_TYPES else "config"


def _check_kernel(row: dict) -> None:
    """The config against the row's own spec, by codegen's checks: a fold over padded
    docs, a feature tile wider than the dim, a backward config of quantized docs are no
    rows any version tuned. The device's budget is left out (the module's docstring)."""
    spec = KernelSpec(row["layout"], row["dtype"], row["dim"], row["precision"], codes=row.get("codes", "none"))
    try:
        if row.get("op", "fwd") == "bwd":
            check_winners(spec, winners_config_of(row["config"]))
        else:
            # Tiles and warps are within their values (check_config) and no other check reads
            # them: their least values keep the register estimate out, and no limit the
            # shared-memory estimate.
            probe = dataclasses.replace(KernelConfig.from_dict(row["config"]), block_q=16, block_d=16, num_warps=16)
            validate(spec, probe, smem_limit=math.inf)
    except ConfigError as exc:
        raise ValueError(f"{_field_of(exc)}: {exc}") from None


def check_winner(row: object, *, where: str, index: int | None = None) -> dict:
    """``row`` checked against the schema and decoded (``config`` and ``near_best`` as
    JSON values); :class:`RowError` names ``where``, the row and the field otherwise."""
    if type(row) is not dict:
        raise RowError(where, f"#{index}" if index is not None else "(no key)", "row",
                       f"is {type(row).__name__}; accepted: a JSON object")
    try:
        out = _check_fields(row)
        _check_choices(out)
        _check_kernel(out)
    except ValueError as exc:
        field, _, why = str(exc).partition(": ")
        raise RowError(where, row_label(row, index), field, why) from None
    return out


# An export document (``export --format json``): its format's name, and the newest version
# of its layout this package reads (1: format, version, exported_at, winners, trials).
EXPORT_FORMAT = "maxsim-forge-db"
EXPORT_VERSION = 1


def check_export(doc: object, *, where: str) -> list:
    """The ``winners`` list of an export document: the format named, a version this package
    reads (a document without one: the first), a list under ``winners``. A ``ValueError``
    naming ``where`` otherwise; the rows themselves are :func:`check_winner`'s."""
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"{where}: not a maxsim-forge export (format {got!r}, expected {EXPORT_FORMAT!r})")
    version = doc.get("version", 1)
    if type(version) is not int or version < 1:
        raise ValueError(f"{where}: version {version!r}; accepted: an integer from 1 to {EXPORT_VERSION}")
    if version > EXPORT_VERSION:
        raise ValueError(f"{where}: export version {version} is newer than this package's {EXPORT_VERSION}; "
                         "upgrade maxsim-forge to read it")
    if "winners" not in doc:
        raise ValueError(f"{where}: holds no 'winners'; accepted: a list of rows, as "
                         "`maxsim-forge export --format json` writes")
    rows = doc["winners"]
    if type(rows) is not list:
        raise ValueError(f"{where}: 'winners' is {type(rows).__name__}; accepted: a list of rows")
    return rows


_reported: set[tuple[str, str, str]] = set()
_reported_lock = threading.Lock()


def report_once(error: RowError) -> None:
    """Log a skipped row once per process (per file, row and field)."""
    key = (error.where, error.row, error.field)
    with _reported_lock:
        if key in _reported:
            return
        _reported.add(key)
    log.warning("maxsim-forge: %s; the row is skipped, the rest of the database serves", error)


__all__ = ["EXPORT_FORMAT", "EXPORT_VERSION", "KEY_FIELDS", "VALUE_FIELDS", "WINNER_FIELDS", "RowError",
           "check_config", "check_export", "check_winner", "report_once", "row_label"]
