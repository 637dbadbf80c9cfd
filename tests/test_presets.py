"""Presets and shapes files (tuner/_presets.py): one key per bucket, picking buckets by
label, and a shapes file's errors."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from maxsim_forge.cli import main
from maxsim_forge.tuned_db import TunedDB
from maxsim_forge.tuner import PRESETS


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_bucket_has_a_key_of_its_own(preset):
    # Two buckets of a preset under one key would overwrite each other's winner.
    from maxsim_forge._keys import doc_fill

    keys = [(b.layout, b.dtype, b.precision, b.dim, b.codes, b.sizes.bucketed(), doc_fill(b.spec)) for b in PRESETS[preset]]
    assert len(keys) == len(set(keys))
    if preset == "default":
        assert {"full", "ragged"} <= {k[-1] for k in keys if k[0] == "padded" and k[5].lq == 32}


def test_only_picks_buckets_by_label():
    from maxsim_forge.tuner import resolve

    picked = resolve("default", None, only=("colbert-full padded/fp16/dim96", "image-query padded/bf16"))
    assert {(b.name, b.dtype) for b in picked} == {("colbert-full", "fp16"), ("image-query", "bf16")}
    assert {b.dim for b in picked if b.name == "colbert-full"} == {96} and len(picked) == 4
    assert [b.nb for b in resolve("default", None, ("bf16",), ("nb16384",))] == [16000] * 10
    with pytest.raises(ValueError, match="matches no bucket; labels look like"):
        resolve("default", None, only=("no such bucket",))
    result = CliRunner().invoke(main, ["tune", "--preset", "default", "--only", "nope", "--db", "x.db"])
    assert result.exit_code == 2 and "'--only'" in result.output and "contains 'nope'" in result.output


def test_shapes_file_and_its_errors(tmp_path):
    shapes = tmp_path / "shapes.json"
    shapes.write_text(json.dumps([{"layout": "pairs", "dtype": "fp16", "dim": 32, "lq": 8, "ld": 16, "nb": 3}]))
    result = CliRunner().invoke(main, ["tune", "--shapes", str(shapes), "--trials", "2", "--quiet",
                                       "--db", str(tmp_path / "t.db")])
    assert result.exit_code == 0, result.output
    assert ": 1 bucket in " in result.output
    assert TunedDB(tmp_path / "t.db").winners()[0]["layout"] == "pairs"
    shapes.write_text(json.dumps([{"layout": "pairs", "dtype": "fp16", "dim": 32, "lq": 8, "ld": 16, "batch": 3}]))
    result = CliRunner().invoke(main, ["tune", "--shapes", str(shapes), "--db", str(tmp_path / "t.db")])
    assert result.exit_code == 1 and "bucket 0" in result.output and "fields:" in result.output
    shapes.write_text(json.dumps([{"layout": "diagonal", "dtype": "fp16", "dim": 32, "lq": 8, "ld": 16, "nb": 3}]))
    result = CliRunner().invoke(main, ["tune", "--shapes", str(shapes), "--db", str(tmp_path / "t.db")])
    assert result.exit_code == 1 and "layout='diagonal'" in result.output
