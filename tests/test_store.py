"""The tuned database's store (tuned_db/_store.py): export, import and merge keep the
faster winner."""

from __future__ import annotations

import json

from click.testing import CliRunner

from maxsim_forge.cli import main
from maxsim_forge.codegen import KernelConfig, kernel_hash
from maxsim_forge.tuned_db import TunedDB
from maxsim_forge.tuner import tune

from _helpers import TINY


def test_export_import_merge_keep_faster(tmp_path):
    runner = CliRunner()
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    tune(TINY[:1], db_path=a, trials=3, progress=False)
    out = tmp_path / "a.json"
    assert runner.invoke(main, ["db", "export", "--db", str(a), "--out", str(out)]).exit_code == 0
    doc = json.loads(out.read_text())
    assert doc["format"] == "maxsim-forge-db" and len(doc["winners"]) == 1
    result = runner.invoke(main, ["db", "import", "--db", str(b), str(out)])
    assert result.exit_code == 0 and "took 1" in result.output
    assert TunedDB(b).winners()[0]["config"] == TunedDB(a).winners()[0]["config"]
    # A slower copy does not replace; a faster one does.
    w = doc["winners"][0]
    config = {**w["config"], "num_stages": 1}  # current: its kernel hash is the one of its config
    khash = kernel_hash(w["layout"], w["dtype"], w["dim"], w["precision"], KernelConfig.from_dict(config))
    slow = dict(w, time_ms=w["time_ms"] * 2, config=config, kernel_hash=khash)
    fast = dict(slow, time_ms=w["time_ms"] / 2)
    c = tmp_path / "c.json"
    c.write_text(json.dumps({**doc, "winners": [slow]}))
    assert "took 0" in runner.invoke(main, ["db", "import", "--db", str(b), str(c)]).output
    other = TunedDB(tmp_path / "other.db")
    from maxsim_forge.tuned_db import import_json

    import_json(other, {**doc, "winners": [fast]})
    result = runner.invoke(main, ["db", "merge", "--db", str(b), str(other.path)])
    assert result.exit_code == 0 and "took 1" in result.output
    assert TunedDB(b).winners()[0]["config"]["num_stages"] == 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "other"}))
    result = runner.invoke(main, ["db", "import", "--db", str(b), str(bad)])
    assert result.exit_code == 1 and "not a maxsim-forge export" in result.output
