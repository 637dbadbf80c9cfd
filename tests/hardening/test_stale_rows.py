"""A stale row serves its own bucket (DESIGN.md, "Lookup at run time")."""

from __future__ import annotations

import logging


import maxsim_forge as mf
from maxsim_forge._keys import GpuInfo
from maxsim_forge.codegen import KernelSpec
from maxsim_forge.reference import maxsim_reference
from maxsim_forge.runtime import Lookup, reset
from maxsim_forge.tuned_db import TunedDB

from conftest import assert_scores

from _helpers import CFG_A, CFG_B
from _guards import _call, _key, _row


# ---- A: a stale row serves its own bucket (DESIGN.md, "Lookup at run time")

def test_a_stale_row_serves_its_own_bucket_after_current_rows_and_before_neighbours(tmp_path, caplog, isolated_lookup):
    q, d = _call()
    db = TunedDB(tmp_path / "user.db")
    db.put_winner(_key(), _row(CFG_A, stale=True))
    db.put_winner(_key(nb=1024), _row(CFG_B))  # a current neighbour
    reset(Lookup(user_path=db.path, shipped_paths=[]))
    with caplog.at_level(logging.WARNING, logger="maxsim_forge"):
        dec = mf.explain(q, d)
        assert (dec.source, dec.config, dec.stale) == ("stale-db", CFG_A.to_dict(), True)
        assert "stale" in str(dec)
        assert_scores(mf.maxsim(q, d), maxsim_reference(q, d), 1e-5, "stale row")
        # Another bucket takes the current neighbour, never the stale row next door.
        dec = mf.explain(q, d[:2])
        assert (dec.source, dec.config) == ("nearest-bucket", CFG_B.to_dict())
        mf.explain(q, d[:1])
    stale = [r for r in caplog.records if "another template version: stale" in r.getMessage()]
    assert len(stale) == 1, caplog.text
    # A current row of the bucket, from any source, comes first.
    shipped = TunedDB(tmp_path / "shipped.db")
    shipped.put_winner(_key(), _row(CFG_B))
    reset(Lookup(user_path=db.path, shipped_paths=[shipped.path]))
    assert (mf.explain(q, d).source, mf.explain(q, d).config) == ("shipped-db", CFG_B.to_dict())
    # A stale config that does not fit the device serves nothing: the heuristic.
    small = GpuInfo(name=_key().gpu, cc="0.0", sm_count=4, smem_limit=6000)  # CFG_A needs 8192
    lookup = Lookup(user_path=db.path, shipped_paths=[])
    sizes = {"nq": 1, "lq": 32, "nb": 3, "ld": 40}
    assert lookup.decide(KernelSpec("padded", "fp16", 128), _key(), small, sizes)[1] == "heuristic"


