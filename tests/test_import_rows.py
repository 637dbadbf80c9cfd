"""Rows from outside (tuned_db/_rows.py, integrations/_vllm_configs.py): an import refuses,
naming the row, the field and the value, what no version of this package could have
written; rows of older kernels or an older search space still pass."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from maxsim_forge.cli import main
from maxsim_forge.codegen import KernelConfig, kernel_hash, template_hash
from maxsim_forge.tuned_db import BucketKey, RowError, TunedDB, check_winner

from _helpers import CFG_A, CFG_B

def _key(*, nb=4) -> BucketKey:
    return BucketKey(gpu="NVIDIA_H100_80GB_HBM3", cc="9.0", layout="padded", dtype="fp16", precision="native",
                     dim=128, nq_bucket=1, lq_bucket=32, nb_bucket=nb, ld_bucket=64, docs="full")


def _row(cfg: KernelConfig) -> dict:
    return {"config": cfg.to_dict(), "time_ms": 1.0, "baseline_ms": 2.0, "speedup": 2.0, "near_best": [],
            "trials": 3, "seed": 0, "template_hash": template_hash(),
            "kernel_hash": kernel_hash("padded", "fp16", 128, "native", cfg)}


def _one_error(result, code: int, *needles: str) -> str:
    """The command failed with ``code`` and one ``Error:`` line last, no traceback."""
    assert isinstance(result.exception, SystemExit), f"{result.exception!r}: {result.output}"
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert lines and lines[-1].startswith("Error: ") and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in lines[-1], f"{needle!r} not in {lines[-1]!r}"
    return lines[-1]


def _export(tmp_path, *rows, **doc) -> str:
    path = tmp_path / "e.json"
    path.write_text(json.dumps({"format": "maxsim-forge-db", "version": 1, "winners": list(rows), **doc}))
    return str(path)


def _good() -> dict:
    return {**_key(nb=8).as_row(), **_row(CFG_B)}


def _import(tmp_path, export: str):
    target = tmp_path / "t.db"
    return CliRunner().invoke(main, ["import", "--format", "json", "--db", str(target), export]), target


def _with(field: str, value) -> dict:
    row = {**_key().as_row(), **_row(CFG_A)}
    if field.startswith("config."):
        row["config"] = {**row["config"], field.removeprefix("config."): value}
    else:
        row[field] = value
    return row


# ---- integers SQLite cannot store: one error naming the row, never a traceback

@pytest.mark.parametrize("field, value, stored", [
    ("dim", 10**30, 2**63 - 1), ("nb_bucket", 2**64, 2**62), ("seed", 2**63, 2**63 - 1), ("seed", -2**63 - 1, -2**63),
    ("trials", 2**63, 2**63 - 1), ("time_ms", 10**30, 2**62), ("sm_count", 10**40, 2**63 - 1),
])
def test_an_integer_sqlite_cannot_store_is_refused_by_name(tmp_path, field, value, stored):
    result, target = _import(tmp_path, _export(tmp_path, _good(), _with(field, value)))
    line = _one_error(result, 1, "row ", f"field {field}", "outside SQLite's integer range", "2**63")
    assert "OverflowError" not in result.output, line
    assert TunedDB(target).winners() == [], "a refused import stores nothing"
    with pytest.raises(RowError) as err:
        check_winner(_with(field, value), where="x.json", index=1)
    assert err.value.field == field, err.value
    check_winner(_with(field, stored), where="x.json")  # the largest (or least) SQLite stores
