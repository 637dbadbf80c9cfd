"""The vLLM drop-in against a re-implementation of vLLM's vanilla algorithm; config export."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from click.testing import CliRunner

from maxsim_forge.cli import main
from maxsim_forge.codegen import KernelConfig
from maxsim_forge.integrations import vllm as mf_vllm
from maxsim_forge.integrations._vanilla import vanilla_maxsim_batched
from maxsim_forge.reference import maxsim_pairs_reference
from maxsim_forge.runtime import Lookup, reset
from maxsim_forge.tuned_db import TunedDB
from maxsim_forge.tuner import Bucket, tune

from conftest import assert_scores, randn

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _no_dbs(tmp_path):
    reset(Lookup(user_path=tmp_path / "none.db", shipped_paths=[]))
    yield
    reset()


def _ragged(n, dim=64, dtype=torch.float16, empty_docs=False):
    q_lens = torch.randint(1, 40, (n,)).tolist()
    d_lens = torch.randint(0 if empty_docs else 1, 90, (n,)).tolist()
    return ([randn(a, dim, dtype=dtype) for a in q_lens], [randn(b, dim, dtype=dtype) for b in d_lens])


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16, torch.float32))
@pytest.mark.parametrize("n", (1, 7, 64, 130))
def test_matches_vanilla_algorithm(n, dtype):
    qs, ds = _ragged(n, dtype=dtype)
    ours = mf_vllm.compute_maxsim_score_batched(qs, ds)
    theirs = vanilla_maxsim_batched(qs, ds)
    assert isinstance(ours, list) and len(ours) == n
    assert all(t.dim() == 0 and t.dtype == torch.float32 and t.device == qs[0].device for t in ours)
    scale = maxsim_pairs_reference(qs, ds, absolute=True)
    assert_scores(torch.stack(ours), torch.stack(theirs), 1e-5, f"vanilla n={n} {dtype}", scale=scale)


def test_size_arguments_do_not_change_results():
    qs, ds = _ragged(20)
    a = torch.stack(mf_vllm.compute_maxsim_score_batched(qs, ds, max_batch_size=3, max_score_matrix_elements=100))
    b = torch.stack(mf_vllm.compute_maxsim_score_batched(qs, ds))
    assert torch.equal(a, b)


def test_mixed_and_other_float_dtypes_are_scored_in_fp32():
    qs, ds = _ragged(5)
    qs[1] = qs[1].float()
    ds[2] = ds[2].double()
    ours = torch.stack(mf_vllm.compute_maxsim_score_batched(qs, ds))
    assert_scores(ours, torch.stack(vanilla_maxsim_batched(qs, ds)), 1e-5, "mixed dtypes")


def test_empty_doc_scores_zero_where_vanilla_gives_minus_inf():
    qs = [randn(3, 32), randn(2, 32)]
    ds = [randn(0, 32), randn(4, 32)]
    ours = mf_vllm.compute_maxsim_score_batched(qs, ds)
    theirs = vanilla_maxsim_batched(qs, ds)
    assert ours[0].item() == 0.0 and theirs[0].item() == float("-inf")
    assert_scores(ours[1][None], theirs[1][None], 1e-5, "second pair")


def test_edge_cases_raise_like_vllm():
    f = mf_vllm.compute_maxsim_score_batched
    assert f([], []) == []
    with pytest.raises(ValueError, match="q_embs and d_embs must have the same length: got 1 and 2"):
        f([randn(2, 8)], [randn(2, 8), randn(2, 8)])
    with pytest.raises(ValueError, match=r"Each embedding tensor must be 2-D: d_embs\[0\] has shape \(1, 2, 8\)"):
        f([randn(2, 8)], [randn(1, 2, 8)])
    with pytest.raises(ValueError, match="must have same dim: pair 1 has 8 and 16"):
        f([randn(2, 8), randn(2, 8)], [randn(2, 8), randn(2, 16)])
    with pytest.raises(ValueError, match="max_batch_size must be greater than 0"):
        f([randn(2, 8)], [randn(2, 8)], max_batch_size=0)
    with pytest.raises(ValueError, match="max_score_matrix_elements must be greater than 0"):
        f([randn(2, 8)], [randn(2, 8)], max_score_matrix_elements=0)
    with pytest.raises(ValueError, match="must be on same device: pair 0 has cpu and meta"):
        f([torch.randn(2, 8)], [torch.empty(2, 8, device="meta")])
    with pytest.raises(TypeError, match=r"q_embs\[0\] has dtype torch.int64"):
        f([torch.ones(2, 8, dtype=torch.long)], [torch.ones(2, 8, dtype=torch.long)])


def test_install_and_uninstall_patch_both_names(monkeypatch):
    def original(*a, **k):
        return "vllm"

    pkg = {name: types.ModuleType(name) for name in
           ("vllm", "vllm.v1", "vllm.v1.pool", "vllm.v1.pool.late_interaction", "vllm.v1.pool.late_interaction_runner")}
    pkg["vllm.v1.pool.late_interaction"].compute_maxsim_score_batched = original
    pkg["vllm.v1.pool.late_interaction_runner"].compute_maxsim_score_batched = original
    for name, module in pkg.items():
        monkeypatch.setitem(sys.modules, name, module)
    patched = mf_vllm.install()
    assert patched == ["vllm.v1.pool.late_interaction", "vllm.v1.pool.late_interaction_runner"]
    runner = sys.modules["vllm.v1.pool.late_interaction_runner"]
    assert runner.compute_maxsim_score_batched is mf_vllm.compute_maxsim_score_batched
    assert sorted(mf_vllm.uninstall()) == sorted(patched)
    assert runner.compute_maxsim_score_batched is original
    assert sys.modules["vllm.v1.pool.late_interaction"].compute_maxsim_score_batched is original


def test_install_without_vllm_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(RuntimeError, match="vLLM is not importable"):
        mf_vllm.install()


def test_export_import_round_trip_and_reader(tmp_path, monkeypatch):
    buckets = [Bucket(layout="pairs", dtype="fp16", dim=32, lq=8, nb=3, ld=20, name="p"),
               Bucket(layout="padded", dtype="fp32", dim=32, lq=8, nb=3, ld=20, precision="ieee"),
               Bucket(layout="allpairs", dtype="bf16", dim=32, nq=3, lq=4, nb=3, ld=16),
               Bucket(layout="padded", dtype="fp32", dim=32, lq=8, nb=3, ld=20, precision="ieee", d_mask="lengths")]
    src = tmp_path / "src.db"
    tune(buckets, db_path=src, trials=2, progress=False)
    out = tmp_path / "vllm"
    runner = CliRunner()
    result = runner.invoke(main, ["export", "--format", "vllm", "--db", str(src), "--out", str(out)])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    gpu = TunedDB(src).winners()[0]["gpu"]
    assert names == sorted([
        f"op=maxsim_pairs,dim=32,device_name={gpu},dtype=fp16.json",
        f"op=maxsim,dim=32,device_name={gpu},dtype=fp32_ieee.json",
        f"op=maxsim_allpairs,dim=32,device_name={gpu},dtype=bf16.json",
    ])
    doc = json.loads((out / names[-1]).read_text())
    assert "triton_version" in doc and all(k.startswith("nq=") for k in doc if k != "triton_version")
    padded = json.loads((out / f"op=maxsim,dim=32,device_name={gpu},dtype=fp32_ieee.json").read_text())
    assert sorted(k.rsplit(",", 1)[1] for k in padded if k != "triton_version") == ["docs=full", "docs=ragged"]
    dst = tmp_path / "dst.db"
    result = runner.invoke(main, ["import", "--format", "vllm", "--db", str(dst), str(out)])
    assert result.exit_code == 0 and "took 4" in result.output, result.output

    def strip(rows):
        return sorted((json.dumps({k: v for k, v in r.items()}, sort_keys=True, default=str) for r in rows))

    assert strip(TunedDB(dst).winners()) == strip(TunedDB(src).winners())

    w = next(r for r in TunedDB(src).winners() if r["layout"] == "pairs")
    monkeypatch.setenv("VLLM_TUNED_CONFIG_FOLDER", str(out))
    cfg = mf_vllm.read_vllm_config("maxsim_pairs", 32, "fp16", gpu, lq=w["lq_bucket"] * 4, ld=w["ld_bucket"], nb=5000)
    assert cfg == KernelConfig.from_dict(w["config"])
    assert mf_vllm.read_vllm_config("maxsim_pairs", 64, "fp16", gpu, lq=8, ld=8, nb=8) is None
    for docs in ("full", "ragged"):
        w = next(r for r in TunedDB(src).winners() if r["layout"] == "padded" and r["docs"] == docs)
        cfg = mf_vllm.read_vllm_config("maxsim", 32, "fp32", gpu, lq=8, ld=20, nb=3, precision="ieee", docs=docs)
        assert cfg == KernelConfig.from_dict(w["config"])

    # A file written before buckets recorded their docs imports with docs "" (either kind).
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    name = f"op=maxsim_pairs,dim=32,device_name={gpu},dtype=fp16.json"
    old_doc = {k.replace(",docs=full", ""): v for k, v in json.loads((out / name).read_text()).items()}
    (legacy / name).write_text(json.dumps(old_doc))
    old_db = tmp_path / "old.db"
    assert mf_vllm.import_vllm(TunedDB(old_db), legacy) == 1
    assert [w["docs"] for w in TunedDB(old_db).winners()] == [""]


def test_quantized_buckets_export_to_files_of_their_own_and_back(tmp_path, monkeypatch):
    buckets = [Bucket(layout="padded", dtype="fp16", dim=32, lq=8, nb=3, ld=20, codes=codes, name="q")
               for codes in ("none", "int8", "fp8xfp8")]
    src = tmp_path / "src.db"
    tune(buckets, db_path=src, trials=2, progress=False)
    out = tmp_path / "vllm"
    result = CliRunner().invoke(main, ["export", "--format", "vllm", "--db", str(src), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = {r["codes"]: r for r in TunedDB(src).winners()}
    gpu = rows["none"]["gpu"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"op=maxsim,dim=32,device_name={gpu},dtype={tag}.json" for tag in ("fp16", "fp16+int8", "fp16+fp8xfp8"))
    dst = tmp_path / "dst.db"
    assert mf_vllm.import_vllm(TunedDB(dst), out) == 3
    assert {r["codes"] for r in TunedDB(dst).winners()} == {"none", "int8", "fp8xfp8"}
    monkeypatch.setenv("VLLM_TUNED_CONFIG_FOLDER", str(out))
    for codes, row in rows.items():
        cfg = mf_vllm.read_vllm_config("maxsim", 32, "fp16", gpu, lq=8, ld=20, nb=3, codes=codes)
        assert cfg == KernelConfig.from_dict(row["config"])
    assert mf_vllm.read_vllm_config("maxsim", 32, "fp16", gpu, lq=8, ld=20, nb=3, codes="int8xint8") is None
