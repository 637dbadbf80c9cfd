"""Warm-up (runtime/_warmup.py): the tuned buckets and the given ones compiled ahead of calls."""

from __future__ import annotations

import pytest

import maxsim_forge as mf
from maxsim_forge.runtime import Lookup, reset
from maxsim_forge.tuned_db import TunedDB

from _helpers import CFG_A, CFG_B, _gpu, _winner
from conftest import DEVICE

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("isolated_lookup")]


def test_warmup_compiles_tuned_buckets(tmp_path):
    db = TunedDB(tmp_path / "user.db")
    _winner(db, CFG_A)
    reset(Lookup(user_path=db.path, shipped_paths=[]))
    decisions = mf.warmup(device=DEVICE)
    assert {d.source for d in decisions} == {"user-db"}
    assert all(d.config == CFG_A.to_dict() for d in decisions)
    given = mf.warmup([{"layout": "allpairs", "dtype": "bf16", "dim": 96, "nq": 4, "lq": 16, "ld": 40, "nb": 100}],
                      device=DEVICE)
    assert given[0].source == "heuristic" and given[0].layout == "allpairs"


def test_warmup_covers_full_docs_that_route_to_a_ragged_row(tmp_path):
    from maxsim_forge.runtime._warmup import _targets

    db = TunedDB(tmp_path / "user.db")
    _winner(db, CFG_A, docs="ragged")
    _winner(db, CFG_B, docs="ragged", nb=1024)
    _winner(db, CFG_B, docs="full", nb=1024)
    reset(Lookup(user_path=db.path, shipped_paths=[]))
    masks = sorted((sizes.nb, spec.d_mask) for spec, sizes in _targets(None, _gpu().name))
    # nb 4: only a ragged row, which full docs route to as well; nb 1024: a row of each kind.
    assert masks == [(4, "lengths"), (4, "none"), (1024, "lengths"), (1024, "none")]
    decisions = mf.warmup(device=DEVICE)
    assert sorted(d.bucket for d in decisions) == sorted([
        "padded/fp16/dim128 nq1 lq32 nb4 ld64", "padded/fp16/dim128 nq1 lq32 nb4 ld64 ragged",
        "padded/fp16/dim128 nq1 lq32 nb1024 ld64", "padded/fp16/dim128 nq1 lq32 nb1024 ld64 ragged"])
    assert all(d.config == CFG_A.to_dict() for d in decisions if " nb4" in d.bucket)
