"""Checking stored winners (tuner/_verify.py): kernel hashes stamped when shipped, stale
rows found, and ``db verify`` on a good and a wrong winner."""

from __future__ import annotations

from dataclasses import replace

import torch
from click.testing import CliRunner

from maxsim_forge.cli import main
from maxsim_forge.codegen import KernelConfig, is_current, kernel_hash
from maxsim_forge.tuned_db import BucketKey, TunedDB, open_db, read_winners
from maxsim_forge.tuner import stale_winners, tune

from _helpers import TINY


def test_winners_record_their_kernel_hash_and_ship_stamps_older_rows(tmp_path):
    src = tmp_path / "run.db"
    tune(TINY[:1], db_path=src, trials=2, progress=False)
    (w,) = TunedDB(src).winners()
    cfg = KernelConfig.from_dict(w["config"])
    assert w["kernel_hash"] == kernel_hash(w["layout"], w["dtype"], w["dim"], w["precision"], cfg)
    assert is_current(w) and not stale_winners([w])
    # A row stored before kernel hashes, of the current template, is stamped when shipped;
    # one of another template is shipped as it is, and stays stale.
    db = TunedDB(src)
    key = BucketKey.from_row(w)
    data = {k: v for k, v in w.items() if k not in key.as_row()}
    db.put_winner(key, {**data, "kernel_hash": ""})
    other = replace(key, nb_bucket=key.nb_bucket * 2)
    db.put_winner(other, {**data, "kernel_hash": "", "template_hash": "0" * 16})
    out = tmp_path / "shipped.db"
    result = CliRunner().invoke(main, ["db", "ship", str(src), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = {r["nb_bucket"]: r for r in read_winners(open_db(str(out), read_only=True))}
    assert rows[key.nb_bucket]["kernel_hash"] == w["kernel_hash"]
    assert rows[other.nb_bucket]["kernel_hash"] == "" and stale_winners(list(rows.values())) == [rows[other.nb_bucket]]
    shown = CliRunner().invoke(main, ["db", "show", "--db", str(out)]).output
    assert "stale" in shown and "yes" in shown


def test_ship_then_verify_then_read_only_lookup(tmp_path):
    import os
    import stat

    from maxsim_forge.runtime import Lookup
    from maxsim_forge._keys import INTERPRETER, gpu_info
    from maxsim_forge.tuner import verify_winners

    src = tmp_path / "run.db"
    tune(TINY, db_path=src, trials=3, progress=False)
    folder = tmp_path / "data"
    folder.mkdir()
    shipped = folder / "GPU.db"
    result = CliRunner().invoke(main, ["db", "ship", str(src), "--out", str(shipped)])
    assert result.exit_code == 0 and "wrote 2 winners" in result.output, result.output
    assert not (folder / "GPU.db-wal").exists()
    assert TunedDB(src).trials() and not open_db(str(shipped), read_only=True)["trials"].count
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = verify_winners(TunedDB(src), device=device)
    assert [r[2] for r in rows] == ["ok", "ok"], rows
    # A read-only folder, as site-packages may be: the lookup still reads it.
    os.chmod(folder, stat.S_IRUSR | stat.S_IXUSR)
    os.chmod(shipped, stat.S_IRUSR)
    try:
        lookup = Lookup(user_path=tmp_path / "none.db", shipped_paths=[shipped]).load()
        gpu = gpu_info(torch.device(device)) if device == "cuda" else INTERPRETER
        assert len(lookup.exact) == 2 or gpu.name != INTERPRETER.name
        assert not [r for r in lookup.reports if "shipped" in r]
    finally:
        os.chmod(folder, stat.S_IRWXU)


def test_verify_reports_a_wrong_winner(tmp_path):
    src = tmp_path / "run.db"
    tune(TINY[:1], db_path=src, trials=2, progress=False)
    db = TunedDB(src)
    (w,) = db.winners()
    from maxsim_forge.tuned_db import BucketKey

    key = BucketKey(**{k: w[k] for k in BucketKey.__dataclass_fields__})
    # Tiles no device's registers hold: the rows' schema takes them (a device's budget is
    # asked where a config is used), the kernels do not.
    db.put_winner(key, {**{k: v for k, v in w.items() if k not in BucketKey.__dataclass_fields__},
                        "config": {**w["config"], "block_q": 256, "block_d": 256, "num_warps": 1}})
    result = CliRunner().invoke(main, ["db", "verify", "--db", str(src)])
    assert result.exit_code == 1 and "pruned_static" in result.output
