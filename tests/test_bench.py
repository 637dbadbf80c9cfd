"""The side-by-side benchmark's pipeline (shrunk cases through the interpreter without CUDA)."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from maxsim_forge import bench
from maxsim_forge.cli import main


def test_every_issue_case_is_listed():
    names = {c.name for c in bench.CASES}
    assert {"colbert-1k-fp16", "colbert-10k-bf16", "colpali-1k", "image-query-1k", "ragged-4k", "16-queries-x-1k",
            "pairs-64", "pairs-1k", "packed-50k-skewed", "colbert-10k-dim96"} <= names


def test_bench_writes_rows_with_versions_and_correct_scores(tmp_path):
    result = CliRunner().invoke(main, ["bench", "--cases", "colbert-1k-fp16,pairs-64,packed-50k-skewed,16-queries-x-1k",
                                       "--impl", "maxsim-forge", "--impl", "vllm-vanilla", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(tmp_path / "bench.csv")))
    got = {(r["case"], r["impl"]) for r in rows}
    assert {("colbert-1k-fp16", "maxsim-forge"), ("pairs-64", "vllm-vanilla"), ("packed-50k-skewed", "maxsim-forge"),
            ("16-queries-x-1k", "maxsim-forge")} <= got
    assert all(float(r["rel_err"]) < 1e-5 and float(r["ms"]) > 0 and r["torch"] and r["date"] for r in rows)
    assert all(float(r["per_call_ms"]) > 0 for r in rows)
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert doc["rows"] and "gpu" in doc
    if not torch.cuda.is_available():
        assert "mean nothing" in doc["gpu"]


def test_bench_rejects_unknown_names(tmp_path):
    result = CliRunner().invoke(main, ["bench", "--cases", "nope", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "unknown case" in result.output
    result = CliRunner().invoke(main, ["bench", "--impl", "faiss", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "unknown implementation" in result.output


def test_chart_when_matplotlib_is_there(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [bench.Row("a", "x", 1.0, 0.9, 1.1, 0.5, 50.0, 0.0, 1e-7), bench.Row("a", "y", 2.0, 1.9, 2.1, 0.5, 25.0, 0.0, 1e-7)]
    paths = bench.write(rows, {"gpu": "G", "date": "d"}, tmp_path)
    assert (tmp_path / "bench.png") in paths and (tmp_path / "bench.png").stat().st_size > 1000


def test_versus_peers_takes_the_faster_peer_and_a_geometric_mean():
    rows = [bench.Row("a", "maxsim-forge", 1.0, 0, 0, 0.5, 50.0, 0, 0),
            bench.Row("a", "flash-maxsim", 4.0, 0, 0, 0.5, 12.5, 0, 0),
            bench.Row("a", "late-interaction-kernels", 2.0, 0, 0, 0.5, 25.0, 0, 0),
            bench.Row("b", "maxsim-forge", 2.0, 0, 0, 0.5, 25.0, 0, 0),
            bench.Row("b", "flash-maxsim", 1.0, 0, 0, 0.5, 50.0, 0, 0),
            bench.Row("c", "maxsim-forge", 1.0, 0, 0, 0.5, 50.0, 0, 0),  # no peer ran c
            bench.Row("c", "torch-eager", 9.0, 0, 0, 0.5, 5.0, 0, 0)]
    table, mean = bench.versus_peers(rows)
    assert [(v.case, v.peer, v.ratio) for v in table] == [("a", "late-interaction-kernels", 2.0),
                                                          ("b", "flash-maxsim", 0.5)]
    assert mean == pytest.approx(1.0)
    assert bench.format_versus(rows)[-1].startswith("geometric mean speedup over the faster peer: 1.00x")
    assert bench.versus_peers(rows[5:]) == ([], None)


@pytest.mark.parametrize("gpu, folder", [("NVIDIA H100 80GB HBM3", "h100-2026-11-27"), ("NVIDIA H200", "h200-2026-11-27"),
                                         ("NVIDIA A100-SXM4-80GB", "a100-2026-11-27"), ("cpu", "cpu-2026-11-27")])
def test_release_folder_is_named_from_the_gpu_and_the_date(gpu, folder):
    assert bench.release_folder(gpu, "2026-11-27") == Path("benchmarks/results") / folder
    assert bench.release_folder(gpu, "2026-11-27", root="out") == Path("out") / folder


def test_release_folder_defaults_to_this_device_and_today_and_rejects_other_dates():
    got = bench.release_folder()
    assert got.parent == Path("benchmarks/results") and got.name.endswith(time.strftime("-%Y-%m-%d"))
    if not torch.cuda.is_available():
        assert got.name.startswith("cpu-")
    with pytest.raises(ValueError, match="date is '27/11/2026'; accepted: YYYY-MM-DD"):
        bench.release_folder("NVIDIA H100", "27/11/2026")
