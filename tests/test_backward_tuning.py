"""Tuning the backward's winners kernel per bucket (maxsim_forge/tuner/_backward.py): its
rows (op "bwd", schema 9), the runtime's backward reading them, db show, db verify and
vLLM files."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from click.testing import CliRunner

from maxsim_forge._inputs import prepare_padded
from maxsim_forge.cli import main
from maxsim_forge.codegen import WinnersConfig, is_current, winners_config_of
from maxsim_forge.integrations import vllm as mf_vllm
from maxsim_forge.runtime import Lookup, reset, winners
from maxsim_forge.runtime._grad import winners_decision
from maxsim_forge.tuned_db import TunedDB
from maxsim_forge.tuner import PRESETS, Bucket, load_buckets, tune
from maxsim_forge.tuner._backward import check_winners_output

from conftest import DEVICE, randn

BWD = Bucket(layout="allpairs", dtype="fp16", dim=32, nq=2, lq=4, nb=3, ld=12, d_mask="mask", op="bwd", name="b")


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    path = tmp_path_factory.mktemp("bwd") / "tuned.db"
    report = tune([BWD], db_path=path, trials=3, progress=False)
    return path, report


def test_a_backward_bucket_is_tuned_into_a_row_of_its_own(tuned):
    path, report = tuned
    (result,) = report.results
    assert isinstance(result.config, WinnersConfig) and result.trials >= 1
    (row,) = TunedDB(path).winners()
    assert row["op"] == "bwd" and is_current(row)
    assert winners_config_of(row["config"]) == result.config
    shown = CliRunner().invoke(main, ["db", "show", "--db", str(path)])
    assert shown.exit_code == 0 and " bwd " in shown.output and result.config.key() in shown.output
    verified = CliRunner().invoke(main, ["db", "verify", "--db", str(path)])
    assert verified.exit_code == 0 and "winners are row maxima" in verified.output


def test_the_runtime_backward_takes_the_tuned_row(tuned, monkeypatch):
    path, report = tuned
    monkeypatch.setenv("MAXSIM_FORGE_COMPILE", "blocking")
    reset(Lookup(user_path=path, shipped_paths=[]))
    try:
        small = BWD.tiny()
        q = randn(small.nq, small.lq, small.dim)
        d = randn(small.nb, small.ld, small.dim)
        mask = torch.rand(small.nb, small.ld, device=DEVICE) > 0.3
        prep = prepare_padded(q, d, d_mask=mask)
        cfg, source = winners_decision(prep)
        assert source == "user-db" and cfg == report.results[0].config
        assert check_winners_output(prep, winners(prep)) is None
        forward_only = prepare_padded(q, d)  # full docs: another bucket, no backward row of its own
        assert winners_decision(forward_only)[1] in ("nearest-bucket", "heuristic")
    finally:
        reset()


def test_a_wrong_winner_is_caught():
    q, d = randn(1, 3, 16), randn(2, 5, 16)
    prep = prepare_padded(q, d)
    idx = winners(prep, WinnersConfig(block_q=16, block_d=16, num_warps=2, num_stages=1))
    assert check_winners_output(prep, idx) is None
    bad = idx.clone()
    bad[0, 0] = (bad[0, 0] + 1) % 5
    assert "below its row's maximum" in check_winners_output(prep, bad)


def test_backward_rows_travel_in_vllm_files_of_their_own(tuned, tmp_path):
    path, _ = tuned
    out = tmp_path / "vllm"
    mf_vllm.export_vllm(TunedDB(path), out)
    (name,) = [p.name for p in out.iterdir()]
    assert name.startswith("op=maxsim_allpairs_backward,")
    back = tmp_path / "back.db"
    assert mf_vllm.import_vllm(TunedDB(back), out) == 1
    (row,) = TunedDB(back).winners()
    assert row["op"] == "bwd" and json.dumps(row["config"], sort_keys=True) == json.dumps(
        TunedDB(path).winners()[0]["config"], sort_keys=True)


def test_presets_and_bucket_files_take_backward_buckets(tmp_path):
    backward = [b for b in PRESETS["default"] if b.op == "bwd"]
    assert len(backward) == 4 and all(b.label().endswith(" backward") for b in backward)
    bad = tmp_path / "b.json"
    bad.write_text(json.dumps([{**dataclasses.asdict(BWD), "codes": "int8"}]))
    with pytest.raises(ValueError, match="op='bwd' takes float docs"):
        load_buckets(bad)
    bad.write_text(json.dumps([{**dataclasses.asdict(BWD), "op": "sideways"}]))
    with pytest.raises(ValueError, match="op='sideways'"):
        load_buckets(bad)
