"""Offline tuning: the search space, Optuna studies per bucket, timing and the correctness gate.

Imported by ``maxsim-forge tune`` only; the runtime never imports it.
"""

from __future__ import annotations

from ._coverage import KINDS, Served, buckets_from_record, coverage_rows, served
from ._presets import PRESETS, Bucket, ShapesFileError, load_buckets, pick, resolve
from ._replay import STRATEGIES, judge, replay
from ._tables import ExhaustiveTable, TableRow
from ._run import TuneReport, journal_path, make_storage, summary_rows, trials_label, tune, tune_on_device
from ._space import (
    RESTRICTIONS, SPACE, candidates_hash, check_static, in_current_space, space_hash, valid_configs,
)
from ._timing import time_fn
from ._verify import stale_winners, stamp_kernel_hash, verify_winners

__all__ = [
    "PRESETS",
    "RESTRICTIONS",
    "SPACE",
    "Bucket",
    "KINDS",
    "Served",
    "ShapesFileError",
    "buckets_from_record",
    "coverage_rows",
    "served",
    "ExhaustiveTable",
    "STRATEGIES",
    "TableRow",
    "TuneReport",
    "candidates_hash",
    "check_static",
    "in_current_space",
    "journal_path",
    "judge",
    "load_buckets",
    "make_storage",
    "pick",
    "replay",
    "resolve",
    "space_hash",
    "summary_rows",
    "trials_label",
    "time_fn",
    "tune",
    "tune_on_device",
    "valid_configs",
    "stale_winners",
    "stamp_kernel_hash",
    "verify_winners",
]
