"""Findings 2 and 3: no file outside the target, a vLLM file never sets the key; one schema for every row read from outside, a bad row never stops scoring."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

import maxsim_forge as mf
from maxsim_forge.cli import main
from maxsim_forge.reference import maxsim_reference
from maxsim_forge.runtime import Lookup, reset
from maxsim_forge.tuned_db import RowError, TunedDB, check_winner

from conftest import DEVICE, assert_scores, randn

from _helpers import CFG_A, CFG_B
from _helpers import one_error as _one_error
from _guards import _call, _key, _put, _row


# ---- finding 2: no file outside the target; a vLLM file's "_winner" never sets the key

def test_vllm_export_writes_no_file_outside_its_folder(tmp_path):
    from maxsim_forge.integrations.vllm import export_vllm

    db = TunedDB(tmp_path / "run.db")
    db.put_winner(_key(gpu="x~evil"), _row(CFG_A))  # a device name no file name may hold
    # A device name that is a path breaks the rows' schema: such rows, written by hand, are
    # skipped (reported once) by every reader, the export's included.
    with db.db.conn:
        for gpu, nb in (("x/../../../evil", 16), ("..", 8)):
            db.db["winners"].insert({**_key(gpu=gpu, nb=nb).as_row(), "config": json.dumps(CFG_A.to_dict())})
    assert [w["gpu"] for w in db.winners()] == ["x~evil"]
    out = tmp_path / "a" / "b" / "out"
    out.parent.mkdir(parents=True)
    with pytest.raises(ValueError, match="cannot be part of a file name"):
        export_vllm(db, out)
    result = CliRunner().invoke(main, ["export", "--format", "vllm", "--db", str(db.path), "--out", str(out)])
    _one_error(result, 1, str(db.path), "cannot be part of a file name")
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix == ".json"]
    assert written == [], written


def test_a_json_export_replaces_a_link_at_its_path_and_never_writes_through_it(tmp_path):
    db = TunedDB(tmp_path / "run.db")
    db.put_winner(_key(), _row(CFG_A))
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    (out / "w.json").symlink_to(elsewhere)
    result = CliRunner().invoke(main, ["export", "--format", "json", "--db", str(db.path), "--out", str(out / "w.json")])
    assert result.exit_code == 0, result.output
    assert elsewhere.read_text() == "keep me" and not (out / "w.json").is_symlink()
    assert len(json.loads((out / "w.json").read_text())["winners"]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["w.json"]  # no part left


def test_vllm_winner_block_cannot_set_the_key(tmp_path):
    from maxsim_forge.integrations.vllm import import_vllm

    folder = tmp_path / "configs"
    folder.mkdir()
    gpu = _key().gpu
    name = f"op=maxsim,dim=128,device_name={gpu},dtype=fp16.json"
    winner = {"time_ms": 1.0, "gpu": "OTHER_GPU", "layout": "packed", "config": {"q_mode": "fold"}}
    (folder / name).write_text(json.dumps({"nq=1,lq=32,ld=64,nb=4,docs=full": {**CFG_A.to_dict(), "_winner": winner}}))
    db = TunedDB(tmp_path / "dst.db")
    with pytest.raises(ValueError, match=r"_winner sets \['config', 'gpu', 'layout'\]"):
        import_vllm(db, folder)
    assert db.winners() == []
    result = CliRunner().invoke(main, ["import", "--format", "vllm", "--db", str(db.path), str(folder)])
    _one_error(result, 1, "_winner sets", "gpu")
    # Without the key fields the same bucket imports under the key its file name gives.
    winner = {"time_ms": 1.0, "cc": "9.0"}
    (folder / name).write_text(json.dumps({"nq=1,lq=32,ld=64,nb=4,docs=full": {**CFG_A.to_dict(), "_winner": winner}}))
    assert import_vllm(db, folder) == 1
    (row,) = db.winners()
    assert (row["gpu"], row["layout"], row["config"]) == (gpu, "padded", CFG_A.to_dict())


# ---- finding 3: one schema for every row read from outside; a bad row never stops scoring

def _plant_bad_rows(path: Path) -> None:
    """Rows whose config is no JSON, whose knob is a list, whose near_best is no JSON,
    whose warp count is 2.0: each in a bucket of its own beside one good row."""
    con = sqlite3.connect(path)
    good = con.execute("SELECT * FROM winners").fetchone()
    cols = [c[1] for c in con.execute("PRAGMA table_info(winners)")]
    bad = {16: {"config": "{not json"}, 32: {"config": json.dumps({**CFG_A.to_dict(), "block_q": [32]})},
           64: {"near_best": "[oops"}, 128: {"config": json.dumps({**CFG_A.to_dict(), "num_warps": 2.0})}}
    with con:
        for nb, change in bad.items():
            row = {**dict(zip(cols, good)), "nb_bucket": nb, **change}
            con.execute(f"INSERT INTO winners ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                        [row[c] for c in cols])
    con.close()


def test_a_bad_row_is_skipped_reported_once_and_the_rest_serves(tmp_path, caplog, isolated_lookup):
    q, d = _call()
    path = tmp_path / "user.db"
    _put(path, _key(), _row(CFG_A))
    _plant_bad_rows(path)
    reset(Lookup(user_path=path, shipped_paths=[]))
    with caplog.at_level(logging.WARNING, logger="maxsim_forge"):
        assert (mf.explain(q, d).source, mf.explain(q, d).config) == ("user-db", CFG_A.to_dict())
        for nb in (16, 32, 64, 128):  # each bad row's own bucket: a neighbour serves
            qq, dd = randn(32, 128), randn(nb, 40, 128)
            assert mf.explain(qq, dd).source == "nearest-bucket"
        assert_scores(mf.maxsim(q, d), maxsim_reference(q, d), 1e-5, "beside bad rows")
        db = TunedDB(path)
        assert len(db.winners()) == 1 and db.winner(_key(nb=16)) is None
        db.winners()
    for nb, field in ((16, "field config: is not JSON"), (32, "field config.block_q"), (64, "field near_best"),
                      (128, "field config.num_warps")):
        where = f"{path}: row {_key(nb=nb).gpu} padded/fp16/dim128 nq1 lq32 nb{nb} ld64"
        lines = [r.getMessage() for r in caplog.records if where in r.getMessage() and field in r.getMessage()]
        assert len(lines) == 2, (nb, caplog.text)  # once by the lookup, once by this process's readers
    # db show marks them; db verify lists them and fails; warmup compiles the good one.
    shown = CliRunner().invoke(main, ["db", "show", "--db", str(path)])
    assert shown.exit_code == 0, shown.output
    assert shown.output.count("BAD ROW") == 4 and "config.num_warps" in shown.output, shown.output
    verified = CliRunner().invoke(main, ["db", "verify", "--db", str(path)])
    assert verified.exit_code == 1 and verified.output.count("bad_row") == 4, verified.output
    assert " ok " in verified.output, verified.output
    assert len(mf.warmup(device=DEVICE)) >= 1


@pytest.mark.parametrize("field, value, named", [
    ("config", {**CFG_A.to_dict(), "num_warps": True}, "config.num_warps"),
    ("config", {**CFG_A.to_dict(), "split_d": 1.0}, "config.split_d"),
    ("config", {**CFG_A.to_dict(), "q_mode": ["loop"]}, "config.q_mode"),
    ("config", "{not json", "config"),
    ("near_best", "[oops", "near_best"),
    ("dim", True, "dim"),
    ("layout", "ragged", "layout"),
    ("time_ms", float("nan"), "time_ms"),
    ("extra", 1, "extra"),
])
def test_db_import_refuses_a_row_that_breaks_the_schema(tmp_path, field, value, named):
    row = {**_key().as_row(), **_row(CFG_A), field: value}
    export = tmp_path / "e.json"
    export.write_text(json.dumps({"format": "maxsim-forge-db", "version": 1,
                                  "winners": [{**_key(nb=8).as_row(), **_row(CFG_B)}, row]}))
    target = tmp_path / "t.db"
    result = CliRunner().invoke(main, ["db", "import", "--db", str(target), str(export)])
    _one_error(result, 1, str(export), "#1" if field == "dim" else "/fp16/dim128 nq1 lq32 nb4 ld64", named)
    assert TunedDB(target).winners() == [], "a refused import stores nothing"
    with pytest.raises(RowError) as err:
        check_winner(row, where="x.json", index=0)
    assert err.value.field.startswith(named), err.value


