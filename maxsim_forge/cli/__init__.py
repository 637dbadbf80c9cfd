"""The ``maxsim-forge`` command. Thin: each command calls one library function.

One module per group of commands: ``_tune`` (tune), ``_db`` (db show/export/import/merge/
ship/verify), ``_io`` (export, import), ``_run`` (codegen, check, warmup, bench); the group,
shared options and the error policy live in ``_group``.
"""

from __future__ import annotations

from . import _db, _io, _run, _tune  # noqa: F401 - each registers its commands on main
from ._group import main

__all__ = ["main"]
