"""The tuned database's schema (tuned_db/_schema.py): older versions migrate, newer ones
are refused."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from maxsim_forge.codegen import KernelConfig, is_current, template_hash
from maxsim_forge.tuned_db import BucketKey, TunedDB, open_db
from maxsim_forge.tuned_db._schema import SCHEMA_VERSION, migrate, version


def test_previous_schema_version_migrates(tmp_path):
    import sqlite_utils

    path = tmp_path / "old.db"
    old = sqlite_utils.Database(path)
    migrate(old, target=1)
    assert version(old) == 1 and "sm_count" not in old["winners"].columns_dict
    old["winners"].insert({"gpu": "G", "cc": "9.0", "layout": "padded", "dtype": "fp16", "precision": "native",
                           "dim": 128, "nq_bucket": 1, "lq_bucket": 32, "ld_bucket": 512, "nb_bucket": 1024,
                           "config": json.dumps(KernelConfig().to_dict()), "time_ms": 0.1, "trials": 4})
    old.conn.close()
    db = TunedDB(path)
    assert version(db.db) == SCHEMA_VERSION
    assert "sm_count" in db.db["winners"].columns_dict
    (row,) = db.winners()
    assert row["config"] == KernelConfig().to_dict() and row["time_ms"] == 0.1
    assert row["cut"] == 0  # a row from before version 7 counts as a finished study
    # Rows from before the key recorded docs say "" and stay distinct from new rows.
    assert row["docs"] == "" and "docs" in db.db["trials"].columns_dict
    assert db.db["winners"].pks[-3:] == ["docs", "codes", "op"]
    assert row["codes"] == "none" and "codes" in db.db["trials"].columns_dict  # version 8: float docs
    assert row["op"] == "fwd" and "op" in db.db["trials"].columns_dict  # version 9: the forward kernel
    old_key = BucketKey.from_row(row)
    assert old_key.docs == "" and old_key.label().endswith("nb1024 ld512 any-docs")
    db.put_winner(replace(old_key, docs="full"), {"config": json.dumps(KernelConfig().to_dict()), "time_ms": 0.2})
    assert sorted(w["docs"] for w in db.winners()) == ["", "full"]
    # Rows from before kernel hashes have none: they are judged by their template hash.
    assert [w["kernel_hash"] for w in db.winners()] == ["", ""]
    # ... and no search-space hash: an older space, as far as --refresh is concerned.
    assert [w["space_hash"] for w in db.winners()] == ["", ""]
    assert [w["space_sizes"] for w in db.winners()] == ["", ""]
    assert not any(is_current(w) for w in db.winners())
    db.put_winner(old_key, {**row, "template_hash": template_hash()})
    assert is_current(db.winner(old_key))


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "new.db"
    db = TunedDB(path)
    db.db.execute("PRAGMA user_version = 42")
    db.db.conn.commit()
    from maxsim_forge.tuned_db import SchemaError

    with pytest.raises(SchemaError, match="newer"):
        open_db(str(path))
