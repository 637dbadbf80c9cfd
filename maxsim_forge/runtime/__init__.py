"""Run-time side: scoring entry points, the dispatcher and its fallbacks."""

from __future__ import annotations

from ._api import Decision, explain, maxsim, maxsim_packed, maxsim_pairs, maxsim_pairs_packed, reset
from ._heuristics import default_config
from ._keys import bucket_key
from ._lookup import SOURCES, Lookup
from ._variant import launch_prepared
from ._warmup import warmup

__all__ = [
    "SOURCES",
    "Decision",
    "Lookup",
    "bucket_key",
    "default_config",
    "explain",
    "launch_prepared",
    "maxsim",
    "maxsim_packed",
    "maxsim_pairs",
    "maxsim_pairs_packed",
    "reset",
    "warmup",
]
