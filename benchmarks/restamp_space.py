"""Stamp with the current search-space hash the rows found in the previous space whose
bucket has exactly the same valid configs in the current one (compared config by config
at the bucket's representative sizes of the `default` preset, on the row's device limits).

A one-off for rows of schema 5, which hold the hash of the whole space, run on the
shipped databases when a change grew the space: this version describes the last one
(q_mode persist joined); for 256-row query tiles and defer_max, `old_mode` removed those
values instead. Rows of other spaces are left as they are. Since schema 6 a row holds
the hash of its own bucket's candidates, and this is no longer needed.

    python benchmarks/restamp_space.py maxsim_forge/tuned_db/data/*.db
"""
import sqlite3
import sys

import maxsim_forge.tuner._space as sp
from maxsim_forge.tuner._presets import PRESETS
from maxsim_forge._problems import synth
from maxsim_forge.runtime._keys import GpuInfo, bucket_key

NEW = sp.space_hash()
new_space, new_r = dict(sp.SPACE), sp.RESTRICTIONS


def old_mode(on):
    if on:
        sp.SPACE["q_mode"] = ("loop", "grid", "fold", "tile")
        sp.RESTRICTIONS = tuple(r for r in new_r if r.name != "persist_for_folded_queries")
    else:
        sp.SPACE.clear()
        sp.SPACE.update(new_space)
        sp.RESTRICTIONS = new_r
    sp.space_hash.cache_clear()


old_mode(True)
OLD = sp.space_hash()
old_mode(False)
print("old", OLD, "new", NEW)
for path in sys.argv[1:]:
    con = sqlite3.connect(path)
    gpu_name, sm, smem = con.execute("select gpu, sm_count, smem_limit from winners limit 1").fetchone()
    gpu = GpuInfo(name=gpu_name, cc="9.0", sm_count=sm, smem_limit=smem)
    n = 0
    for b in PRESETS["default"]:
        prep = synth(b.spec, b.sizes, device="meta", seed=0, skew=b.layout == "packed").prep
        key = bucket_key(prep, gpu)
        new = set(sp.valid_configs(prep.spec, b.sizes, sm_count=sm, smem_limit=smem))
        old_mode(True)
        old = set(sp.valid_configs(prep.spec, b.sizes, sm_count=sm, smem_limit=smem))
        old_mode(False)
        where = " and ".join(f"{k} = ?" for k in key.__dataclass_fields__)
        vals = [getattr(key, k) for k in key.__dataclass_fields__]
        rows = con.execute(f"select space_hash from winners where {where}", vals).fetchall()
        same = new == old
        if rows and rows[0][0] == OLD and same:
            con.execute(f"update winners set space_hash = ? where {where}", [NEW] + vals)
            n += 1
        print(f"{b.label():50s} {'same' if same else f'+{len(new - old)}'} {rows[0][0] if rows else '-'}")
    con.commit()
    print(path, "restamped", n)
