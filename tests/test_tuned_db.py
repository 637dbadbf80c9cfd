"""The databases shipped in the package: readable anywhere, current schema, valid rows."""

from __future__ import annotations

import pytest

from maxsim_forge.codegen import KernelConfig, KernelSpec, validate
from maxsim_forge.tuned_db import SCHEMA_VERSION, BucketKey, open_db, read_winners, shipped_db_paths
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
    rows = read_winners(db)
    assert rows
    for row in rows:
        assert row["gpu"] == path.stem, f"{path.name} holds a row for {row['gpu']}"
        assert row["docs"] in ("full", "ragged"), "shipped rows record whether their docs were full"
        cfg = KernelConfig.from_dict(row["config"])
        precision = row["precision"] if row["dtype"] == "fp32" else "tf32"
        validate(KernelSpec(row["layout"], row["dtype"], row["dim"], precision), cfg, smem_limit=row["smem_limit"])
        assert row["time_ms"] > 0 and row["trials"] > 0 and row["template_hash"] and row["triton_version"]


@pytest.mark.parametrize("path", shipped_db_paths(), ids=lambda p: p.stem)
def test_shipped_database_runs_the_kernels_it_was_tuned_with(path):
    # The runtime ignores a row whose kernels the template no longer renders: a template
    # edit that changes a shipped winner's code must come with that bucket tuned again
    # (docs/tuning.md).
    rows = read_winners(open_db(str(path), read_only=True, immutable=True))
    assert all(row["kernel_hash"] for row in rows), f"{path.name} has rows without a kernel hash"
    stale = [f"{BucketKey.from_row(r).label()} {KernelConfig.from_dict(r['config']).key()}" for r in stale_winners(rows)]
    assert not stale, f"{path.name} has rows whose kernels changed since they were tuned: {stale}"
