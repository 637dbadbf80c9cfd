"""Finding 8: every command-line mistake ends in one Error: line, never a traceback."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from click.testing import CliRunner

import maxsim_forge as mf
from maxsim_forge.cli import main
from maxsim_forge.reference import maxsim_reference
from maxsim_forge.runtime import Lookup, largest_dim

from conftest import assert_scores, randn

from _helpers import CFG_A
from _helpers import one_error as _one_error
from _guards import files, shared_dir  # noqa: F401  (fixtures)
from _guards import _key, _put, _row, _unprivileged


DB_COMMANDS = {
    "db show": ["db", "show", "--db", "{db}"],
    "db verify": ["db", "verify", "--db", "{db}"],
    "tune": ["tune", "--shapes", "{shapes}", "--trials", "1", "--quiet", "--db", "{db}"],
    "db import": ["db", "import", "--db", "{db}", "{export}"],
    "import": ["import", "--format", "json", "--db", "{db}", "{export}"],
    "export": ["export", "--format", "json", "--db", "{db}", "--out", "{tmp}/out.json"],
    "db export": ["db", "export", "--db", "{db}", "--out", "{tmp}/out.json"],
    "db merge": ["db", "merge", "--db", "{db}", "{good}"],
}
DB_PROBLEMS = {"corrupt": "not a maxsim-forge database", "newer": "is newer than this package's",
               "locked": "is locked by another process"}


@pytest.mark.parametrize("problem", DB_PROBLEMS)
@pytest.mark.parametrize("command", DB_COMMANDS)
def test_a_database_that_cannot_be_used_is_one_error_naming_it(files, command, problem):
    values = {k: str(v) for k, v in files.items()}
    args = [a.format(**{**values, "db": values[problem]}) for a in DB_COMMANDS[command]]
    result = CliRunner().invoke(main, args)
    line = _one_error(result, 1, str(files[problem]), DB_PROBLEMS[problem])
    if command == "db merge":
        assert str(files["good"]) not in line, "the merge blames the source for the target's fault"


def test_a_read_only_database_is_one_error_for_the_commands_that_write(shared_dir):
    path = shared_dir / "ro.db"
    _put(path, _key(), _row(CFG_A))
    path.chmod(0o444)
    export = shared_dir / "e.json"
    export.write_text(json.dumps({"format": "maxsim-forge-db", "winners": [{**_key(nb=8).as_row(), **_row(CFG_A)}]}))
    export.chmod(0o644)
    shapes = shared_dir / "shapes.json"
    shapes.write_text(json.dumps([{"layout": "padded", "dtype": "fp16", "dim": 32, "lq": 8, "ld": 16, "nb": 3}]))
    shapes.chmod(0o644)

    def run(args):
        result = CliRunner().invoke(main, args)
        return result.exit_code, result.output, repr(result.exception)

    for args in (["db", "import", "--db", str(path), str(export)], ["db", "merge", "--db", str(path), str(path)],
                 ["tune", "--shapes", str(shapes), "--trials", "1", "--quiet", "--db", str(path)]):
        code, output, exc = _unprivileged(run, args)
        assert code == 1 and output.strip().splitlines()[-1].startswith("Error: "), (output, exc)
        assert str(path) in output and "cannot be written" in output and "Traceback" not in output, output
    code, output, _ = _unprivileged(run, ["db", "show", "--db", str(path)])  # reading it is fine
    assert code == 0 and "bq32-bdoc16" in output, output


@pytest.mark.parametrize("args, env, code, needles", [
    (["export", "--format", "json", "--db", "{good}", "--out", "{tmp}/folder"], {}, 2, ["--out", "is a folder"]),
    (["export", "--format", "vllm", "--db", "{good}", "--out", "{tmp}/plain"], {}, 2, ["--out", "is a file"]),
    (["export", "--format", "json", "--db", "{good}", "--out", "{tmp}/nowhere/x.json"], {}, 2,
     ["--out", "does not exist"]),
    (["db", "export", "--db", "{good}", "--out", "{tmp}/nowhere/x.json"], {}, 2, ["--out", "does not exist"]),
    (["import", "--format", "json", "--db", "{tmp}/new.db", "{tmp}/folder"], {}, 2, ["SOURCE", "a JSON file"]),
    (["check", "--batch", "0"], {}, 2, ["--batch", "0"]),
    (["tune", "--trials", "0", "--db", "{tmp}/t.db"], {}, 2, ["--trials", "0", ">=1"]),
    (["tune", "--trials", "-3", "--db", "{tmp}/t.db"], {}, 2, ["--trials", "-3"]),
    (["tune", "--shapes", "{tmp}/neg.json", "--db", "{tmp}/t.db"], {}, 1, ["bucket 0", "lq=-8", "positive integer"]),
    (["warmup", "--bucket", '{"layout": "padded", "dtype": "fp16", "dim": 32, "lq": 8, "nb": 4}'], {}, 2,
     ["--bucket", "lacks ld"]),
    (["warmup", "--bucket", '{"layout": "diagonal", "dtype": "fp16", "dim": 32, "lq": 8, "ld": 8, "nb": 4}'], {}, 2,
     ["--bucket", "layout='diagonal'", "accepted: padded"]),
    (["warmup", "--bucket", "{not json"], {}, 2, ["--bucket"]),
    (["db", "show", "--layout", "ragged", "--db", "{good}"], {}, 2, ["--layout", "ragged", "padded"]),
    (["db", "show"], {"MAXSIM_FORGE_DB": "{tmp}/folder"}, 2, ["MAXSIM_FORGE_DB", "is a folder"]),
    (["db", "show"], {"MAXSIM_FORGE_DB": "{tmp}/nothing.db"}, 2, ["MAXSIM_FORGE_DB", "no tuned database"]),
    (["check", "--batch", "1"], {"MAXSIM_FORGE_CACHE": "{tmp}/plain/kernels"}, 1, ["MAXSIM_FORGE_CACHE"]),
    (["codegen", "--dim", "4000"], {}, 2, ["--dim", "4000", "3584"]),
    (["codegen", "--dim", "2000", "--dtype", "fp32"], {}, 2, ["--dim", "1792"]),
    (["tune", "--shapes", "{tmp}/wide.json", "--db", "{tmp}/t.db"], {}, 1, ["dim=4000", "3584"]),
], ids=lambda v: None)
def test_a_command_line_mistake_is_one_error_naming_the_option(files, args, env, code, needles):
    tmp = files["tmp"]
    bucket = {"layout": "padded", "dtype": "fp16", "dim": 32, "lq": 8, "ld": 16, "nb": 3}
    (tmp / "neg.json").write_text(json.dumps([{**bucket, "lq": -8}]))
    (tmp / "wide.json").write_text(json.dumps([{**bucket, "dim": 4000}]))
    values = {k: str(v) for k, v in files.items()}

    def fill(text: str) -> str:  # "{tmp}/x" -> the path; JSON braces stay as they are
        for name, value in values.items():
            text = text.replace("{" + name + "}", value)
        return text

    result = CliRunner().invoke(main, [fill(a) for a in args], env={k: fill(v) for k, v in env.items()})
    _one_error(result, code, *needles)
    assert not (tmp / "t.db").exists() and not (tmp / "new.db").exists(), "a refused command wrote a database"


def test_warmup_without_cuda_says_what_to_do(isolated_lookup):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    with pytest.raises(RuntimeError, match="none is available here.*device='cpu' with TRITON_INTERPRET=1"):
        mf.warmup()
    with pytest.raises(ValueError, match="bucket 0 lacks dtype"):
        mf.warmup([{"layout": "padded"}], device="cpu")


def test_a_dim_above_what_the_kernels_take_is_scored_by_torch_and_named(isolated_lookup):
    q, d = randn(4, 3600), randn(2, 5, 3600)
    dec = mf.explain(q, d)
    assert dec.source == "torch-fallback" and "dim 3600" in dec.variant and "(3584)" in dec.variant, dec
    assert_scores(mf.maxsim(q, d), maxsim_reference(q, d), 1e-5, "dim 3600")
    assert mf.explain(randn(4, 3584), randn(2, 5, 3584)).source == "heuristic"
    assert (largest_dim("fp16"), largest_dim("bf16"), largest_dim("fp32")) == (3584, 3584, 1792)


def test_a_folder_as_the_user_database_is_named(tmp_path, caplog, isolated_lookup):
    folder = tmp_path / "db-folder"
    folder.mkdir()
    with caplog.at_level(logging.WARNING, logger="maxsim_forge"):
        lookup = Lookup(user_path=folder, shipped_paths=[]).load()
    assert [r for r in lookup.reports if "is a folder, not a database file" in r], lookup.reports
    assert "disk I/O" not in caplog.text

