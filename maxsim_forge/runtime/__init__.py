"""Run-time side: scoring entry points, the dispatcher and its fallbacks."""

from __future__ import annotations

from ._api import Decision, reset
from ._entry import maxsim, maxsim_packed, maxsim_pairs, maxsim_pairs_packed, score_prepared, use_ops
from ._explain import explain
from ._grad import backward_scores, winners
from ._grad import _torch_backward as torch_backward
from ._heuristics import default_config
from ._keys import bucket_key
from ._limits import largest_dim
from ._lookup import SOURCES, Lookup
from ._record import read as read_record
from ._variant import launch_prepared
from ._warmup import check_bucket, warmup

__all__ = [
    "SOURCES",
    "Decision",
    "Lookup",
    "backward_scores",
    "bucket_key",
    "check_bucket",
    "default_config",
    "explain",
    "largest_dim",
    "launch_prepared",
    "maxsim",
    "maxsim_packed",
    "maxsim_pairs",
    "maxsim_pairs_packed",
    "read_record",
    "reset",
    "score_prepared",
    "torch_backward",
    "use_ops",
    "winners",
    "warmup",
]
