"""Rows from outside (tuned_db/_rows.py, integrations/_vllm_configs.py): an import refuses,
naming the row, the field and the value, what no version of this package could have
written; rows of older kernels or an older search space still pass."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3

import pytest
from click.testing import CliRunner

from maxsim_forge.cli import main
from maxsim_forge.codegen import (
    DEFAULT_SMEM_LIMIT, Q_MODES, ConfigError, KernelConfig, KernelSpec, kernel_hash, template_hash, validate,
)
from maxsim_forge.tuned_db import (
    EXPORT_FORMAT, EXPORT_VERSION, BucketKey, RowError, TunedDB, check_config, check_export, check_winner,
)

from _helpers import CFG_A, CFG_B, one_error

BWD = {"block_q": 32, "block_d": 64, "num_warps": 4, "num_stages": 2}


def _key(*, nb=4) -> BucketKey:
    return BucketKey(gpu="NVIDIA_H100_80GB_HBM3", cc="9.0", layout="padded", dtype="fp16", precision="native",
                     dim=128, nq_bucket=1, lq_bucket=32, nb_bucket=nb, ld_bucket=64, docs="full")


def _row(cfg: KernelConfig) -> dict:
    return {"config": cfg.to_dict(), "time_ms": 1.0, "baseline_ms": 2.0, "speedup": 2.0, "near_best": [],
            "trials": 3, "seed": 0, "template_hash": template_hash(),
            "kernel_hash": kernel_hash("padded", "fp16", 128, "native", cfg)}


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
    line = one_error(result, 1, "row ", f"field {field}", "outside SQLite's integer range", "2**63")
    assert "OverflowError" not in result.output, line
    assert TunedDB(target).winners() == [], "a refused import stores nothing"
    with pytest.raises(RowError) as err:
        check_winner(_with(field, value), where="x.json", index=1)
    assert err.value.field == field, err.value
    check_winner(_with(field, stored), where="x.json")  # the largest (or least) SQLite stores


# ---- values no version wrote: refused with the field, the value and what is accepted

@pytest.mark.parametrize("field, value, named, accepted", [
    ("config.q_mode", "evil", "config.q_mode", "'loop', 'grid', 'fold', 'tile', 'persist'"),
    ("config.block_q", 17, "config.block_q", "a power of two from 16 to 256"),
    ("config.block_q", 2**40, "config.block_q", "a power of two from 16 to 256"),
    ("config.block_k", 8, "config.block_k", "a power of two from 16 to 256"),
    ("config.num_warps", 3, "config.num_warps", "1, 2, 4, 8, 16"),
    ("config.num_stages", 0, "config.num_stages", "1 to 6"),
    ("config.split_d", 1024, "config.split_d", "a power of two from 1 to 64"),
    ("config.q_mode", "fold", "config.q_mode", "contradicts layout 'padded'"),  # folds need several queries
    ("config.exact_k", True, "config.exact_k", "no power of two"),  # dim 128 is a power of two
    ("lq_bucket", 0, "lq_bucket", "a power of two >= 1"),
    ("lq_bucket", 7, "lq_bucket", "a power of two >= 1"),
    ("nq_bucket", 0, "nq_bucket", "a power of two >= 1"),
    ("nb_bucket", 1000, "nb_bucket", "a power of two >= 1"),
    ("trials", -3, "trials", "an integer >= 0"),
    ("time_ms", 0, "time_ms", "a finite number > 0"),
    ("time_ms", -1.0, "time_ms", "a finite number > 0"),
    ("gpu", "../../etc/passwd", "gpu", "without '/'"),
    ("gpu", "..", "gpu", "without '/'"),
    ("gpu", "a\\b", "gpu", "without '/'"),
    ("gpu", "H100\n", "gpu", "control characters"),
    ("gpu", "", "gpu", "a device name"),
])
def test_a_value_no_version_wrote_is_refused_by_name(tmp_path, field, value, named, accepted):
    result, target = _import(tmp_path, _export(tmp_path, _good(), _with(field, value)))
    row = "#1" if field == "gpu" else "NVIDIA_H100_80GB_HBM3 padded/fp16/dim128 nq"
    line = one_error(result, 1, f"row {row}", f"field {named}: ", accepted)
    if not isinstance(value, bool):
        assert repr(value) in line or str(value) in line, line
    assert TunedDB(target).winners() == [], "a refused import stores nothing"
    with pytest.raises(RowError) as err:
        check_winner(_with(field, value), where="x.json", index=1)
    assert err.value.field == named, err.value


@pytest.mark.parametrize("change, named", [
    ({"config": {**BWD, "block_q": 256}}, "config.block_q"),  # the winners kernel's tiles stop at 128
    ({"config": {**BWD, "num_warps": 16}}, "config.num_warps"),
    ({"config": {"block_q": 32}}, "config"),  # a backward config has its four knobs
    ({"codes": "int8"}, "codes"),  # gradients are of float docs only
])
def test_a_backward_row_is_checked_as_the_winners_kernel_takes_it(change, named):
    row = {**_key().as_row(), **_row(CFG_A), "op": "bwd", "config": BWD, **change}
    with pytest.raises(RowError) as err:
        check_winner(row, where="x.json", index=0)
    assert err.value.field == named, err.value


def test_db_show_calls_a_row_of_an_unknown_q_mode_bad_not_stale(tmp_path):
    path = tmp_path / "user.db"
    with TunedDB(path) as db:
        db.put_winner(_key(), _row(CFG_A))
    con = sqlite3.connect(path)
    with con:
        con.execute("UPDATE winners SET config = ?", [json.dumps({**CFG_A.to_dict(), "q_mode": "evil"})])
    con.close()
    shown = CliRunner().invoke(main, ["db", "show", "--db", str(path)])
    assert shown.exit_code == 0, shown.output
    assert "BAD ROW: field config.q_mode: 'evil'" in shown.output and "stale" not in shown.output, shown.output


# ---- what older versions wrote still passes

@pytest.mark.parametrize("row", [
    pytest.param({"kernel_hash": "f" * 16, "space_hash": "older"}, id="stale-older-space"),
    pytest.param({"kernel_hash": "", "template_hash": "", "space_sizes": ""}, id="before-kernel-hashes"),
    # Over this device's shared memory and registers: another device, or older estimates.
    pytest.param({"config": dataclasses.asdict(KernelConfig(block_q=256, block_d=256, block_k=128, num_warps=1,
                                                            num_stages=6))}, id="over-the-device"),
    pytest.param({"config": {"q_mode": "persist", "block_q": 256}, "layout": "allpairs"}, id="persist-allpairs"),
    pytest.param({"config": {"q_mode": "fold"}, "layout": "packed", "nq_bucket": 8}, id="fold-packed"),
    pytest.param({"config": {"exact_k": True, "block_k": 128}, "dim": 96}, id="exact-k"),
    pytest.param({"op": "bwd", "config": BWD}, id="backward"),
    pytest.param({"time_ms": None, "trials": None, "seed": None}, id="no-values"),
    pytest.param({"trials": 0, "baseline_ms": 0.0, "speedup": 0.0}, id="no-trials-no-baseline"),
    pytest.param({"gpu": "AMD Instinct MI300X"}, id="device-with-spaces"),
    pytest.param({"dtype": "fp32", "precision": "ieee", "config": {"block_k": 64}, "dim": 64}, id="fp32"),
    pytest.param({"codes": "int8xint8", "config": {"block_k": 128}}, id="quantized-query"),
])
def test_rows_older_versions_wrote_still_pass(row):
    stored = {**_key().as_row(), **_row(CFG_A), **row}
    check_winner(stored, where="x.json", index=0)


@pytest.mark.parametrize("knob, values", [
    ("block_q", [*range(-1, 300), 512, 2**40]), ("block_d", [*range(-1, 300), 512]),
    ("block_k", [*range(-1, 300), 512]), ("num_warps", [*range(-1, 40), 2**40]),
    ("num_stages", [*range(-1, 12)]), ("split_d", [*range(-1, 130), 1024]),
    ("q_mode", [*Q_MODES, "evil", "", "LOOP"]),
])
def test_knob_values_are_codegen_validate_s(knob, values):
    # The knob alone decides, on a spec and config that take every value of every knob.
    spec = KernelSpec("allpairs", "fp16", 256)
    base = KernelConfig(block_q=16, block_d=16, block_k=16, num_warps=4, num_stages=1, q_mode="grid")
    for value in values:
        try:
            validate(spec, dataclasses.replace(base, **{knob: value}), smem_limit=DEFAULT_SMEM_LIMIT)
            codegen = True
        except ConfigError:
            codegen = False
        try:
            check_config({knob: value})
            rows = True
        except ValueError:
            rows = False
        assert rows == codegen, f"{knob}={value!r}: the row schema says {rows}, codegen.validate {codegen}"


# ---- the export document around the rows

def test_an_export_newer_than_this_package_is_refused_saying_upgrade():
    doc = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION + 98, "winners": []}
    with pytest.raises(ValueError, match=r"e.json: export version 99 is newer than this package's 1; upgrade"):
        check_export(doc, where="e.json")


@pytest.mark.parametrize("doc, needle", [
    ({"format": "maxsim-forge-db", "version": 1}, "holds no 'winners'"),
    ({"format": "maxsim-forge-db", "version": 1, "winners": {}}, "'winners' is dict"),
    ({"format": "maxsim-forge-db", "version": "1", "winners": []}, "version '1'; accepted: an integer from 1 to 1"),
    ({"format": "maxsim-forge-db", "version": True, "winners": []}, "version True"),
    ({"format": "maxsim-forge-db", "version": 0, "winners": []}, "version 0"),
    ({"format": "other", "winners": []}, "not a maxsim-forge export"),
    ([], "not a maxsim-forge export (format 'list'"),
])
def test_an_export_document_that_is_not_one_is_refused(doc, needle):
    with pytest.raises(ValueError, match=r"^e\.json: ") as err:
        check_export(doc, where="e.json")
    assert needle in str(err.value), err.value


def test_an_export_document_of_this_version_gives_its_rows():
    rows = [_good()]
    assert check_export({"format": EXPORT_FORMAT, "version": 1, "winners": rows}, where="e") is rows
    assert check_export({"format": EXPORT_FORMAT, "winners": []}, where="e") == []  # by hand: the first version


def test_the_export_format_is_the_one_export_writes():
    from maxsim_forge.tuned_db import EXPORT_FORMAT as written

    assert EXPORT_FORMAT == written


def test_import_of_a_newer_export_says_upgrade(tmp_path):
    result, target = _import(tmp_path, _export(tmp_path, _good(), version=99))
    one_error(result, 1, "e.json", "newer", "upgrade maxsim-forge")
    assert not target.exists() or TunedDB(target).winners() == []


def test_import_of_a_document_without_winners_is_an_error(tmp_path):
    export = tmp_path / "e.json"
    export.write_text(json.dumps({"format": "maxsim-forge-db", "version": 1}))
    result, _ = _import(tmp_path, str(export))
    one_error(result, 1, "e.json", "holds no 'winners'")


# ---- vLLM folders

NAME = "op=maxsim,dim=128,device_name=NVIDIA_H100_80GB_HBM3,dtype=fp16.json"


def _bucket(**winner) -> dict:
    return {"nq=1,lq=32,ld=64,nb=4,docs=full": {**CFG_A.to_dict(), "_winner": {"time_ms": 1.0, **winner}}}


def _vllm_import(folder):
    return CliRunner().invoke(main, ["import", "--format", "vllm", "--db", str(folder.parent / "t.db"), str(folder)])


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "configs"
    path.mkdir()
    return path


def test_a_vllm_folder_without_config_files_is_an_error_naming_it(folder):
    (folder / "notes.json").write_text("{}")
    one_error(_vllm_import(folder), 1, str(folder), "holds no tuned-config files")


@pytest.mark.parametrize("content, needle", [
    (b"not json", "is not JSON (Expecting value at line 1 column 1)"),
    (b'{"a": 1,,}', "is not JSON"),
    (b"\xff\xfe\x00", "is no UTF-8 text"),
])
def test_a_vllm_file_that_is_not_json_is_named(folder, content, needle):
    (folder / NAME).write_text(json.dumps(_bucket()))
    bad = "op=maxsim_pairs,dim=64,device_name=X,dtype=bf16.json"
    (folder / bad).write_bytes(content)
    line = one_error(_vllm_import(folder), 1, bad, needle)
    assert line.startswith(f"Error: {bad}: "), line
    assert not (folder.parent / "t.db").exists() or TunedDB(folder.parent / "t.db").winners() == []


def test_a_vllm_link_that_leaves_the_folder_is_refused_by_name(folder, tmp_path):
    outside = tmp_path / "elsewhere.json"
    outside.write_text(json.dumps(_bucket()))
    os.symlink("/etc/passwd", folder / NAME)
    one_error(_vllm_import(folder), 1, NAME, "a link to /etc/passwd, outside", "accepted: files in the folder")
    (folder / NAME).unlink()
    os.symlink(outside, folder / NAME)  # a JSON file of buckets, but not the folder's
    one_error(_vllm_import(folder), 1, NAME, "outside")
    (folder / NAME).unlink()
    (folder / "kept").mkdir()  # a link inside the folder is read
    (folder / "kept" / "real.json").write_text(json.dumps(_bucket()))
    os.symlink(os.path.join("kept", "real.json"), folder / NAME)
    result = _vllm_import(folder)
    assert result.exit_code == 0 and "took 1 winners" in result.output, result.output


@pytest.mark.parametrize("make", ["folder", "fifo"])
def test_a_vllm_name_that_is_no_plain_file_is_refused(folder, make):
    if make == "folder":
        (folder / NAME).mkdir()
    else:
        os.mkfifo(folder / NAME)  # reading it would wait for a writer for good
    one_error(_vllm_import(folder), 1, NAME, "is no plain file")


@pytest.mark.parametrize("name, bucket, needle", [
    ("op=maxsim,dim=99999999999999999999999,device_name=X,dtype=fp16.json", None, "dim='9999"),
    ("op=maxsim,dim=\u00b2,device_name=X,dtype=fp16.json", None, "dim='\u00b2'"),
    ("op=maxsim,dim=9223372036854775808,device_name=X,dtype=fp16.json", None, "field dim: 9223372036854775808"),
    (NAME, "nq=1,lq=32,ld=64,nb=99999999999999999999", "(powers of two)"),
    (NAME, "nq=1,lq=7,ld=64,nb=4", "field lq_bucket: 7"),
    (NAME, "nq=1,lq=0,ld=64,nb=4", "field lq_bucket: 0"),
])
def test_a_vllm_size_no_version_wrote_is_refused_naming_the_file(folder, name, bucket, needle):
    doc = _bucket() if bucket is None else {bucket: _bucket()["nq=1,lq=32,ld=64,nb=4,docs=full"]}
    (folder / name).write_text(json.dumps(doc))
    line = one_error(_vllm_import(folder), 1, name, needle)
    assert "Traceback" not in line and "OverflowError" not in line


def test_a_vllm_config_no_version_wrote_is_refused(folder):
    doc = {"nq=1,lq=32,ld=64,nb=4,docs=full": {**CFG_A.to_dict(), "q_mode": "evil", "_winner": {"time_ms": 1.0}}}
    (folder / NAME).write_text(json.dumps(doc))
    one_error(_vllm_import(folder), 1, NAME, "config.q_mode: 'evil'")
    (folder / NAME).write_text(json.dumps(_bucket(time_ms=0.0)))
    one_error(_vllm_import(folder), 1, NAME, "field time_ms: 0.0")
