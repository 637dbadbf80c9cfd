"""The benchmark (maxsim_forge/bench/): its protocol end to end through the interpreter,
enforced correctness, intervals, held-out shapes, floors and files."""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from pathlib import Path

import pytest
import torch

from maxsim_forge import bench
from maxsim_forge.bench._protocol import Worker, summarise
from maxsim_forge.tuner import resolve

WRONG_IMPL = '''
import torch
from maxsim_forge.bench import as_tensor, reference_of

def off_by_one(x):
    ref = reference_of(x).float()
    return lambda: ref * 1.1 + 1.0    # a wrong score: must fail the check, never get a time

def exact(x):
    ref = reference_of(x).float()
    return lambda: ref.clone()
'''


def test_every_issue_case_is_listed():
    names = {c.name for c in bench.CASES}
    assert {"colbert-1k-fp16", "colbert-10k-bf16", "colpali-1k", "image-query-1k", "ragged-4k", "16-queries-x-1k",
            "pairs-64", "pairs-1k", "packed-50k-skewed", "colbert-10k-dim96"} <= names


@pytest.fixture
def custom_impls(tmp_path, monkeypatch):
    (tmp_path / "bench_custom_impls.py").write_text(WRONG_IMPL)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{':'.join(sys.path)}")
    return "bench_custom_impls"


def test_protocol_times_correct_implementations_and_fails_wrong_ones(custom_impls):
    cases, _ = bench.select("colbert-1k-fp16,pairs-64")
    impls = ["maxsim-forge", f"{custom_impls}:exact", f"{custom_impls}:off_by_one"]
    results, meta = bench.run(cases, impls, device="cpu", repeats=3, log=lambda line: None)
    assert [r.case["name"] for r in results] == ["colbert-1k-fp16", "pairs-64"]
    for r in results:
        forge, exact, wrong = (r.impls[i] for i in impls)
        assert forge["status"] == exact["status"] == "ready" and forge["rel_err"] < 1e-5 and exact["rel_err"] < 1e-7
        assert forge["ms"]["n"] == 3 and forge["ms"]["low"] <= forge["ms"]["median"] <= forge["ms"]["high"]
        assert forge["first_call_s"] > 0 and forge["per_call_ms"]["median"] > 0
        assert wrong["status"] == "failed" and "ms" not in wrong and "relative error" in wrong["error"]
        assert r.ratio is None and r.floor_ms is None  # no peer and no floors without a GPU
    assert meta["repeats"] == 3 and "mean nothing" in meta["gpu"]


def test_ratios_are_per_repetition_against_the_faster_peer():
    def worker(impl, times):
        w = Worker(impl, {})
        w.status, w.times = "ready", [{"ms": t, "per_call_ms": t} for t in times]
        return w

    workers = [worker("maxsim-forge", [1.0, 2.0, 1.0, 1.0, 1.0]),
               worker("flash-maxsim", [4.0, 4.0, 1.0, 3.0, 2.0]),
               worker("late-interaction-kernels", [2.0, 8.0, 8.0, 8.0, 8.0]),
               worker("torch-eager", [0.1] * 5)]  # not a peer: never the ratio's denominator
    r = summarise({"name": "c"}, workers, floor_ms=0.5)
    # Per repetition: min(4, 2)/1, min(4, 8)/2, min(1, 8)/1, 3/1, 2/1 -> 2, 2, 1, 3, 2.
    assert r.ratio["median"] == 2.0 and (r.ratio["low"], r.ratio["high"]) == (1.0, 3.0)
    assert r.ratio["coverage"] == pytest.approx(1 - 2 / 32) and r.impls["maxsim-forge"]["floor_pct"] == 50.0
    assert bench.geomean_of_medians([r, summarise({"name": "d"}, [worker("maxsim-forge", [2.0]),
                                                                  worker("flash-maxsim", [1.0])])]) == pytest.approx(1.0)


@pytest.mark.parametrize("n, k", [(5, 1), (6, 1), (10, 2), (20, 6), (50, 18)])
def test_median_interval_takes_the_tightest_order_statistics_that_cover(n, k):
    values = [float(v) for v in range(n, 0, -1)]
    got = bench.median_interval(values)
    assert (got.low, got.high) == (float(k), float(n + 1 - k))
    tail = sum(math.comb(n, i) for i in range(k)) / 2**n
    assert got.coverage == pytest.approx(1 - 2 * tail)
    if n >= 6:
        assert got.coverage >= 0.95
        tighter = 1 - 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n
        assert tighter < 0.95, "a tighter interval would still cover"
    assert got.median == pytest.approx((n + 1) / 2)


def test_statistics_refuse_what_they_cannot_summarise():
    with pytest.raises(ValueError, match="at least one value"):
        bench.median_interval([])
    with pytest.raises(ValueError, match="level is 1.5"):
        bench.median_interval([1.0], level=1.5)
    with pytest.raises(ValueError, match="positive values"):
        bench.geometric_mean([1.0, 0.0])
    assert bench.geometric_mean([1.0, 4.0]) == pytest.approx(2.0)


def test_heldout_shapes_are_seeded_realistic_and_in_no_preset():
    presets = resolve("default", None)
    taken = {(b.layout, b.dim, b.d_mask != "none", b.sizes.bucketed()) for b in presets}
    cases = bench.heldout_cases(60, seed=7, presets=presets)
    assert cases == bench.heldout_cases(60, seed=7, presets=presets)
    assert cases != bench.heldout_cases(60, seed=8, presets=presets)
    assert {c.layout for c in cases} == {"padded", "allpairs", "packed", "pairs"} and {c.dim for c in cases} == {64, 96, 128}
    assert any(c.ragged for c in cases) and any(not c.ragged and c.layout == "padded" for c in cases)
    for c in cases:
        assert 8 <= c.lq <= 256 and 16 <= c.ld <= 2048 and 1 <= c.nb <= 20_000, c
        from maxsim_forge._keys import Sizes

        assert (c.layout, c.dim, c.ragged, Sizes(nq=c.nq, lq=c.lq, nb=c.nb, ld=c.ld).bucketed()) not in taken, c
    with pytest.raises(ValueError, match="count is -1"):
        bench.heldout_cases(-1)


def test_floors_count_the_tokens_actually_needed():
    full = bench.make_inputs(bench.Case(name="f", layout="padded", lq=8, nb=6, ld=40, dim=32), "cpu", seed=1)
    ragged = bench.make_inputs(bench.Case(name="r", layout="padded", lq=8, nb=6, ld=40, dim=32, ragged=True), "cpu", seed=1)
    valid = int(ragged.d_lengths.sum())
    assert full.doc_tokens() == 240 and ragged.doc_tokens() == valid < 240
    assert ragged.nbytes() == (valid + 8) * 32 * 2 + 4 * 6 and ragged.flops() == 2 * 8 * valid * 32
    pairs = bench.make_inputs(bench.Case(name="p", layout="pairs", lq=8, nb=3, ld=20, dim=32), "cpu", seed=1)
    assert pairs.flops() == sum(2 * q.shape[0] * d.shape[0] * 32 for q, d in zip(pairs.queries, pairs.docs))


def test_selecting_cases_names_what_is_unknown():
    with pytest.raises(ValueError, match=r"unknown case\(s\) \['nope'\]"):
        bench.select("nope")
    assert [c.name for c in bench.select("pairs-64")[0]] == ["pairs-64"]
    with pytest.raises(ValueError, match="unknown implementation 'faiss'"):
        bench.resolve_impl("faiss")


def test_limitations_say_what_a_cpu_run_cannot_do():
    notes = " ".join(bench.limitations(list(bench.IMPLS), "cpu"))
    assert "interpreter" in notes and "mean nothing" in notes and "flash-maxsim" in notes and "need a GPU" in notes


def test_files_carry_versions_and_every_status(tmp_path, custom_impls):
    cases, _ = bench.select("pairs-64")
    results, meta = bench.run(cases, ["maxsim-forge", f"{custom_impls}:off_by_one"], device="cpu", repeats=2,
                              log=lambda line: None)
    paths = bench.write(results, meta, tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "bench.csv")))
    assert {(r["impl"], r["status"]) for r in rows} == {("maxsim-forge", "ready"), (f"{custom_impls}:off_by_one", "failed")}
    assert all(r["torch"] and r["date"] and r["triton"] for r in rows)
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert doc["repeats"] == 2 and doc["cases"][0]["impls"]["maxsim-forge"]["ms"]["n"] == 2
    lines = bench.format_report(results, meta)
    assert any("failed" in line and "relative error" in line for line in lines)
    if "matplotlib" in sys.modules or (tmp_path / "bench.png") in paths:
        assert (tmp_path / "bench.png").stat().st_size > 1000


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


def test_bench_command_runs_cases_and_heldout_shapes(tmp_path):
    from click.testing import CliRunner

    from maxsim_forge.cli import main

    result = CliRunner().invoke(main, ["bench", "--cases", "colbert-1k-fp16", "--impl", "maxsim-forge", "--repeat", "2",
                                       "--heldout", "1", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    if not torch.cuda.is_available():
        assert "Note: no CUDA device" in result.output
    rows = list(csv.DictReader(open(tmp_path / "bench.csv"))) + list(csv.DictReader(open(tmp_path / "heldout.csv")))
    assert [r["case"].split("-")[0] for r in rows] == ["colbert", "heldout"]
    assert all(r["status"] == "ready" and float(r["ms"]) > 0 for r in rows)


def test_a_bench_run_cut_short_keeps_the_cases_it_finished(tmp_path, monkeypatch):
    """Each finished case is written at once: a run stopped later (a time limit, a crash)
    leaves the cases before it on disk."""
    from click.testing import CliRunner

    from maxsim_forge.cli import main

    real, seen = bench.run_case, []

    def run_case(case, *args, **kwargs):
        seen.append(case["name"])
        if len(seen) == 2:
            raise RuntimeError("the machine's time is up")
        return real(case, *args, **kwargs)

    monkeypatch.setattr(bench, "run_case", run_case)
    result = CliRunner().invoke(main, ["bench", "--cases", "colbert-1k-fp16,pairs-64", "--impl", "maxsim-forge",
                                       "--repeat", "1", "--out", str(tmp_path)])
    assert result.exit_code != 0 and seen == ["colbert-1k-fp16", "pairs-64"]
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert [c["case"]["name"] for c in doc["cases"]] == ["colbert-1k-fp16"]
    assert doc["cases"][0]["impls"]["maxsim-forge"]["ms"]["n"] == 1
    assert [r["case"] for r in csv.DictReader(open(tmp_path / "bench.csv"))] == ["colbert-1k-fp16"]
    assert not list(tmp_path.glob("*.tmp"))  # written beside, then moved over


@pytest.mark.parametrize("args, option", [(["--cases", "nope"], "--cases"), (["--impl", "faiss"], "--impl"),
                                          (["--repeat", "0"], "--repeat"), (["--heldout", "-1"], "--heldout")])
def test_bench_command_refuses_bad_options_by_name(tmp_path, args, option):
    from click.testing import CliRunner

    from maxsim_forge.cli import main

    result = CliRunner().invoke(main, ["bench", *args, "--out", str(tmp_path)])
    assert result.exit_code == 2 and option in result.output, result.output


def test_a_worker_that_hangs_is_reported_not_waited_for(custom_impls, tmp_path, monkeypatch):
    from maxsim_forge.bench import _protocol

    (tmp_path / "bench_hanging_impl.py").write_text("import time\n\ndef hangs(x):\n    time.sleep(60)\n")
    monkeypatch.setattr(_protocol, "START_TIMEOUT_S", 20.0)
    cases, _ = bench.select("pairs-64")
    t0 = time.perf_counter()
    (result,), _ = bench.run(cases, ["bench_hanging_impl:hangs"], device="cpu", repeats=1, log=lambda line: None)
    entry = result.impls["bench_hanging_impl:hangs"]
    assert entry["status"] == "crashed" and "no answer to 'start' within 20 s" in entry["error"]
    assert time.perf_counter() - t0 < 50
