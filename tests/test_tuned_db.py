"""The databases shipped in the package: readable anywhere, current schema, valid rows."""

from __future__ import annotations

import pytest

from maxsim_forge._keys import GpuInfo
from maxsim_forge.codegen import KernelConfig, KernelSpec, check_winners, validate, winners_config_of
from maxsim_forge.runtime import Lookup
from maxsim_forge.tuned_db import SCHEMA_VERSION, BucketKey, open_db, read_winners, scan_winners, shipped_db_paths
from maxsim_forge.tuner import stale_winners
from maxsim_forge.tuned_db._schema import version


def test_shipped_databases_exist():
    names = {p.stem for p in shipped_db_paths()}
    assert {"NVIDIA_H100_80GB_HBM3", "NVIDIA_H200"} <= names


@pytest.mark.parametrize("path", shipped_db_paths(), ids=lambda p: p.stem)
def test_shipped_database_is_sound(path):
    assert not path.with_name(path.name + "-wal").exists(), "ship databases without a write-ahead log"
    db = open_db(str(path), read_only=True, immutable=True)
    assert version(db) == SCHEMA_VERSION
    assert db["trials"].count == 0, "shipped databases carry winners only"
    rows, bad = scan_winners(db, where=path.name)
    assert not bad, f"{path.name} has rows that break the schema: {[str(e) for e in bad]}"
    assert rows
    for row in rows:
        assert row["gpu"] == path.stem, f"{path.name} holds a row for {row['gpu']}"
        assert row["docs"] in ("full", "ragged"), "shipped rows record whether their docs were full"
        precision = row["precision"] if row["dtype"] == "fp32" else "tf32"
        spec = KernelSpec(row["layout"], row["dtype"], row["dim"], precision)
        if row["op"] == "bwd":  # the backward's winners kernel
            check_winners(spec, winners_config_of(row["config"]))
        else:
            validate(spec, KernelConfig.from_dict(row["config"]), smem_limit=row["smem_limit"])
        assert row["time_ms"] > 0 and row["trials"] > 0 and row["template_hash"] and row["triton_version"]


@pytest.mark.parametrize("path", shipped_db_paths(), ids=lambda p: p.stem)
def test_shipped_rows_serve_their_buckets_current_or_stale(path):
    # A kernel change (the NaN rule, say) makes rows stale until a GPU tunes them again;
    # meanwhile each still serves its own bucket (DESIGN.md, "Lookup at run time") as long
    # as it decodes cleanly and validates against today's space on its device.
    rows = read_winners(open_db(str(path), read_only=True, immutable=True))
    assert all(row["kernel_hash"] for row in rows), f"{path.name} has rows without a kernel hash"
    stale = stale_winners(rows)
    note = f"{len(stale)} of {len(rows)} rows of {path.name} are stale (they serve until tuned again)"
    lookup = Lookup(user_path=path.with_name("absent.db"), shipped_paths=[path])
    for row in rows:
        key = BucketKey.from_row(row)
        gpu = GpuInfo(name=row["gpu"], cc=row["cc"], sm_count=row["sm_count"], smem_limit=row["smem_limit"])
        precision = row["precision"] if row["dtype"] == "fp32" else "tf32"
        d_mask = "lengths" if row["docs"] == "ragged" and row["layout"] in ("padded", "allpairs") else "none"
        spec = KernelSpec(row["layout"], row["dtype"], row["dim"], precision, "none", d_mask)
        sizes = {"nq": key.nq_bucket, "lq": key.lq_bucket, "nb": key.nb_bucket, "ld": key.ld_bucket}
        cfg, source = lookup.decide(spec, key, gpu, sizes)
        assert cfg == KernelConfig.from_dict(row["config"]), f"{key.label()} does not take its own row; {note}"
        assert source == ("stale-db" if row in stale else "shipped-db"), f"{key.label()}: {source}; {note}"
