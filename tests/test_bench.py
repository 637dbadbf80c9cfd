"""The side-by-side benchmark's pipeline (shrunk cases through the interpreter without CUDA)."""

from __future__ import annotations

import csv
import json

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
