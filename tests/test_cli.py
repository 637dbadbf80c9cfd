"""The command line: every command has help, appears in the README, and works."""

from __future__ import annotations

import ast
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from maxsim_forge.cli import main
from maxsim_forge.tuned_db import shipped_db_paths

README = Path(__file__).resolve().parents[1] / "README.md"


def _commands(group: click.Group, prefix: str = ""):
    for name, cmd in group.commands.items():
        yield f"{prefix}{name}", cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, f"{prefix}{name} ")


def test_every_command_has_help_and_an_example_and_is_in_readme():
    readme = README.read_text()
    for name, cmd in _commands(main):
        assert cmd.help and cmd.help.strip(), f"{name} has no help"
        if not isinstance(cmd, click.Group):
            assert "Example:" in cmd.help, f"{name}'s help has no example"
        assert f"maxsim-forge {name}" in readme, f"README does not mention `maxsim-forge {name}`"
        for param in cmd.params:
            if isinstance(param, click.Option):
                assert param.help, f"{name} option {param.opts} has no help"


def test_codegen_prints_parseable_source():
    result = CliRunner().invoke(main, ["codegen", "--layout", "allpairs", "--dim", "96",
                                       "--config", '{"q_mode": "fold", "block_q": 64}'])
    assert result.exit_code == 0, result.output
    ast.parse(result.output)
    header = result.output.splitlines()[:2]
    assert "templates/maxsim_fwd_folded.py.j2" in header[0], header
    assert header[1].startswith("# variant: allpairs-fp16-dim96-") and ".bq64-" in header[1] and "-fold-" in header[1]
    assert "\n\n\n\n" not in result.output and "def _maxsim_fwd_kernel(" in result.output


def test_codegen_reports_invalid_knob():
    result = CliRunner().invoke(main, ["codegen", "--layout", "pairs", "--config", '{"q_mode": "fold"}'])
    assert result.exit_code == 2 and "'--config'" in result.output
    assert "q_mode='fold' contradicts layout 'pairs'" in result.output


@pytest.mark.parametrize("dim", (8, 40, 64, 100))
def test_codegen_without_a_config_fits_the_feature_tile_to_the_dim(dim):
    result = CliRunner().invoke(main, ["codegen", "--layout", "padded", "--dim", str(dim)])
    assert result.exit_code == 0, result.output
    assert f"-bk{min(128, max(16, 1 << (dim - 1).bit_length()))}-" in result.output.splitlines()[1]
    given = CliRunner().invoke(main, ["codegen", "--dim", str(dim), "--config", '{"block_k": 128}'])
    assert (given.exit_code == 0) == (dim > 64), given.output  # a block_k the user gives is kept, and checked


def test_codegen_refuses_a_config_that_is_no_json_object():
    result = CliRunner().invoke(main, ["codegen", "--config", "[1]"])
    assert result.exit_code == 2 and "a JSON object of knobs is expected, got list" in result.output


def test_check_runs_end_to_end():
    result = CliRunner().invoke(main, ["check", "--batch", "3", "--dtype", "bf16"])
    assert result.exit_code == 0, result.output
    assert ": OK" in result.output


def test_top_level_json_export_and_import(tmp_path):
    from maxsim_forge.tuned_db import TunedDB
    from maxsim_forge.tuner import Bucket, tune

    src, dst, out = tmp_path / "a.db", tmp_path / "b.db", tmp_path / "a.json"
    tune([Bucket(layout="padded", dtype="fp16", dim=32, lq=8, nb=3, ld=20)], db_path=src, trials=2, progress=False)
    runner = CliRunner()
    result = runner.invoke(main, ["export", "--format", "json", "--db", str(src), "--out", str(out)])
    assert result.exit_code == 0 and "wrote 1 winners" in result.output, result.output
    result = runner.invoke(main, ["import", "--format", "json", "--db", str(dst), str(out)])
    assert result.exit_code == 0 and "took 1 winners" in result.output, result.output
    assert TunedDB(dst).winners() == TunedDB(src).winners()


def test_warmup_command_compiles_a_given_bucket():
    bucket = '{"layout": "padded", "dtype": "fp16", "dim": 32, "lq": 8, "ld": 20, "nb": 100}'
    result = CliRunner().invoke(main, ["warmup", "--bucket", bucket])
    assert result.exit_code == 0, result.output
    assert "warmed 1 variants" in result.output and "padded-fp16-dim32" in result.output
    result = CliRunner().invoke(main, ["warmup", "--bucket", '{"layout": "padded"}'])
    assert result.exit_code == 2 and "dtype" in result.output


def test_db_show_shipped():
    result = CliRunner().invoke(main, ["db", "show", "--shipped", "--gpu", "NVIDIA_H100_80GB_HBM3"])
    assert result.exit_code == 0, result.output
    assert "NVIDIA_H100_80GB_HBM3" in result.output and "persist" in result.output and "NVIDIA_H200 " not in result.output


def _shipped_h100_copy(tmp_path: Path) -> tuple[Path, Path]:
    """(the shipped H100 database, a copy of it in tmp_path)."""
    shipped = next(p for p in shipped_db_paths() if "H100" in p.name)
    copy = tmp_path / "copy.db"
    copy.write_bytes(shipped.read_bytes())
    return shipped, copy


def test_db_show_marks_a_cut_study(tmp_path):
    # A winner whose study the time budget cut short says so, next to its trial count.
    import sqlite3

    _, copy = _shipped_h100_copy(tmp_path)
    con = sqlite3.connect(copy)
    with con:
        con.execute("UPDATE winners SET cut = 0, trials = 24")
        con.execute("UPDATE winners SET cut = 1, trials = 9 WHERE rowid = (SELECT MIN(rowid) FROM winners)")
    con.close()
    result = CliRunner().invoke(main, ["db", "show", "--db", str(copy)])
    assert result.exit_code == 0, result.output
    assert result.output.count("9 (cut)") == 1 and "24 (cut)" not in result.output


def test_db_show_reads_without_writing(tmp_path):
    # Showing a database leaves its file as it was (no WAL switch, no migration), and a
    # missing one is an error, not a new empty file.
    shipped, copy = _shipped_h100_copy(tmp_path)
    result = CliRunner().invoke(main, ["db", "show", "--db", str(copy)])
    assert result.exit_code == 0 and "persist" in result.output, result.output
    assert copy.read_bytes() == shipped.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.db"]
    missing = tmp_path / "missing.db"
    result = CliRunner().invoke(main, ["db", "show", "--db", str(missing)])
    assert result.exit_code == 2 and f"no tuned database at {missing}" in result.output
    assert not missing.exists()


def test_codegen_renders_quantized_variants():
    result = CliRunner().invoke(main, ["codegen", "--codes", "int8xint8", "--dim", "64",
                                       "--config", '{"block_k": 64}'])
    assert result.exit_code == 0, result.output
    ast.parse(result.output)
    assert "q_scale_ptr" in result.output and "tl.int32" in result.output
    plain = CliRunner().invoke(main, ["codegen", "--dim", "64", "--config", '{"block_k": 64}'])
    assert "scale_ptr" not in plain.output  # float docs: the kernels they always had


def test_check_fidelity_reports_recall_and_says_which_target_is_missed():
    result = CliRunner().invoke(main, ["check", "--fidelity"])
    lines = result.output.splitlines()
    assert any(line.startswith("int8      query as given") for line in lines), result.output
    assert any(line.startswith("fp8_e4m3  query quantized too") for line in lines), result.output
    # A missed target is said, by how much, and fails the command; a met one is not.
    missed = [line for line in lines if "is under the target" in line]
    assert (result.exit_code != 0) == bool(missed), result.output
    for line in missed:
        assert "query as given" in line and " by 0." in line


def test_cli_turns_the_interpreter_on_before_triton_loads(tmp_path):
    import os
    import subprocess
    import sys

    import torch

    if torch.cuda.is_available():
        return  # the interpreter is only the CLI's choice without CUDA
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["MAXSIM_FORGE_CACHE"] = str(tmp_path / "kernels")
    done = subprocess.run([sys.executable, "-m", "maxsim_forge", "check", "--batch", "2"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "OK" in done.stdout
