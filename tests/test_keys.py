"""The shared keys: sizes and buckets by name, the dtype table, and the one nearest-bucket
rule that the runtime's lookup, the tuner and the vLLM reader all use."""

from __future__ import annotations

import ast
import dataclasses
import json
import logging
from pathlib import Path

import pytest
import torch

import maxsim_forge
from maxsim_forge._keys import (
    DEFAULT_SMEM_LIMIT,
    DTYPE_NAMES,
    INTERPRETER,
    BucketKey,
    Entry,
    GpuInfo,
    Sizes,
    bucket,
    bucket_distance,
    docs_distance,
    nearest,
    query_tile_limit,
)
from maxsim_forge.codegen import DTYPES, KernelConfig, KernelSpec, template_hash, torch_dtype
from maxsim_forge.integrations.vllm import export_vllm, read_vllm_config
from maxsim_forge.runtime import Lookup
from maxsim_forge.tuned_db import TunedDB

PACKAGE = Path(maxsim_forge.__file__).parent
KEY = dict(gpu="G", cc="9.0", layout="padded", dtype="fp16", precision="native", dim=128)


def _key(**sizes) -> BucketKey:
    return BucketKey(**KEY, **{f"{name}_bucket": value for name, value in sizes.items()})


def _entry(nq=1, lq=32, nb=1024, ld=512, *, block_q=32, docs="full", name="") -> Entry:
    return Entry(sizes=Sizes(nq=nq, lq=lq, nb=nb, ld=ld), config=KernelConfig(block_q=block_q), docs=docs, source=name)


def _names(entries) -> list[str]:
    return [e.source for e in entries]


# ---- sizes and keys, by name
def test_sizes_and_keys_are_built_by_name_in_one_order():
    with pytest.raises(TypeError):
        Sizes(1, 32, 1024, 512)
    with pytest.raises(TypeError):
        BucketKey("G", "9.0", "padded", "fp16", "native", 128, 1, 32, 1024, 512)
    order = ["nq", "lq", "nb", "ld"]
    assert [f.name for f in dataclasses.fields(Sizes)] == order
    assert [f.name for f in dataclasses.fields(BucketKey)][6:10] == [f"{n}_bucket" for n in order]
    key = _key(nq=2, lq=32, nb=1024, ld=512)
    assert key.sizes == Sizes(nq=2, lq=32, nb=1024, ld=512)
    assert BucketKey.from_row({**key.as_row(), "config": "{}"}) == key
    old = {k: v for k, v in key.as_row().items() if k != "docs"}
    assert BucketKey.from_row(old).docs == ""


def test_label_writes_dim_in_full_and_the_sizes_in_call_order():
    key = _key(nq=1, lq=32, nb=1024, ld=512)
    assert key.label() == "padded/fp16/dim128 nq1 lq32 nb1024 ld512"
    assert dataclasses.replace(key, docs="ragged").label() == "padded/fp16/dim128 nq1 lq32 nb1024 ld512 ragged"
    assert dataclasses.replace(key, docs="").label() == "padded/fp16/dim128 nq1 lq32 nb1024 ld512 any-docs"


@pytest.mark.parametrize("x, expected", [(-3, 0), (0, 0), (1, 1), (2, 2), (3, 4), (7, 8), (33, 64), (257, 512),
                                         (1024, 1024), (1025, 2048)])
def test_bucket_is_the_next_power_of_two(x, expected):
    assert bucket(x) == expected


def test_sizes_bucketed_and_scaled():
    sizes = Sizes(nq=3, lq=33, nb=1000, ld=257)
    assert sizes.bucketed() == Sizes(nq=4, lq=64, nb=1024, ld=512)
    assert sizes.scaled(48) == Sizes(nq=3, lq=33, nb=48, ld=257)
    assert sizes.scaled(5000) == sizes


def test_dtype_names_read_codegens_table_backwards():
    assert DTYPE_NAMES == {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
    assert all(torch_dtype(name) is dtype for dtype, name in DTYPE_NAMES.items())
    assert set(DTYPE_NAMES.values()) == set(DTYPES)


def test_one_default_shared_memory_limit():
    from maxsim_forge.codegen import _config

    assert INTERPRETER.smem_limit == DEFAULT_SMEM_LIMIT == 232_448
    # codegen.validate's default: the same number, until codegen exports its own.
    assert getattr(_config, "DEFAULT_SMEM_LIMIT", DEFAULT_SMEM_LIMIT) == DEFAULT_SMEM_LIMIT


# ---- distances
def test_bucket_distance_weighs_each_size_by_name():
    base = Sizes(nq=2, lq=32, nb=1024, ld=512)
    assert bucket_distance(base, base) == 0.0
    for name, weight in (("nq", 1.0), ("lq", 2.0), ("nb", 1.0), ("ld", 2.0)):
        doubled = dataclasses.replace(base, **{name: 2 * getattr(base, name)})
        assert bucket_distance(base, doubled) == bucket_distance(doubled, base) == weight, name
    far = Sizes(nq=8, lq=8, nb=256, ld=128)  # 2 + 2 * 2 + 2 + 2 * 2 doublings
    assert bucket_distance(base, far) == 12.0
    assert bucket_distance(Sizes(nq=0, lq=1, nb=0, ld=1), Sizes(nq=1, lq=1, nb=1, ld=1)) == 0.0


def test_docs_distance():
    assert docs_distance("full", "full") == 0.0
    assert docs_distance("", "ragged") == 0.5
    assert docs_distance("ragged", "full") == docs_distance("full", "ragged") == 1.0


def test_query_tile_limit_is_the_folded_rows_of_a_set():
    assert query_tile_limit(nq=1, lq=1000) is None
    assert query_tile_limit(nq=2, lq=32) == 64
    assert query_tile_limit(nq=3, lq=5) == 16
    assert query_tile_limit(nq=4, lq=0) == 1


# ---- nearest, filter by filter
def test_nearest_takes_the_bucket_itself_first_its_docs_before_unrecorded():
    want = Sizes(nq=1, lq=32, nb=1024, ld=512)
    entries = [_entry(nb=2048, name="neighbour"), _entry(docs="", name="any-docs"),
               _entry(docs="ragged", name="ragged"), _entry(name="own")]
    assert _names(nearest(entries, want, docs="full")) == ["own", "any-docs", "neighbour", "ragged"]
    assert _names(nearest(entries, want, docs="ragged")) == ["ragged", "any-docs", "own", "neighbour"]


def test_nearest_ranks_neighbours_by_distance_ties_in_given_order():
    want = Sizes(nq=1, lq=32, nb=1024, ld=512)
    entries = [_entry(ld=2048, name="ld+2"), _entry(nb=4096, name="nb+2"), _entry(nb=256, name="nb-2"),
               _entry(nb=2048, docs="ragged", name="nb+1 ragged"), _entry(nb=2048, docs="", name="nb+1 any")]
    # 1.5, then three at 2 (one doubling of nb and the other docs; two of nb), then 4.
    assert _names(nearest(entries, want, docs="full")) == ["nb+1 any", "nb+2", "nb-2", "nb+1 ragged", "ld+2"]


def test_nearest_keeps_the_query_kind():
    one, sets = [_entry(nq=1, name="one")], [_entry(nq=8, block_q=256, name="set")]
    assert _names(nearest(one + sets, Sizes(nq=1, lq=32, nb=64, ld=512), docs="full")) == ["one"]
    assert _names(nearest(one + sets, Sizes(nq=2, lq=32, nb=64, ld=512), docs="full")) == ["set"]


def test_nearest_skips_neighbours_with_a_taller_query_tile_but_not_the_bucket_itself():
    entries = [_entry(nq=8, block_q=256, name="tall"), _entry(nq=16, block_q=64, name="short")]
    want = Sizes(nq=2, lq=32, nb=1024, ld=512)
    assert _names(nearest(entries, want, docs="full")) == ["tall", "short"]
    assert _names(nearest(entries, want, docs="full", tallest=64)) == ["short"]
    own = Sizes(nq=8, lq=32, nb=1024, ld=512)
    assert _names(nearest(entries, own, docs="full", tallest=64)) == ["tall", "short"]
    assert _names(nearest(entries, own, docs="full", tallest=64, own_bucket=False)) == ["short"]


def test_nearest_asks_usable_lazily_in_rank_order():
    entries = [_entry(nb=4096, name="far"), _entry(nb=2048, name="near"), _entry(name="own")]
    asked = []

    def usable(entry):
        asked.append(entry.source)
        return entry.source != "own"

    ranked = nearest(entries, Sizes(nq=1, lq=32, nb=1024, ld=512), docs="full", usable=usable)
    assert next(ranked).source == "near" and asked == ["own", "near"]
    assert next(nearest(entries, Sizes(nq=1, lq=32, nb=1024, ld=512), docs="full", usable=lambda e: False),
                None) is None


# ---- one rule for the runtime and the vLLM reader
ONE = KernelConfig(block_q=32, block_d=16, block_k=64, num_warps=2, num_stages=2)
TALL = KernelConfig(block_q=256, block_d=32, block_k=128, num_warps=8, num_stages=2, q_mode="fold")
SHORT = KernelConfig(block_q=64, block_d=32, block_k=128, num_warps=4, num_stages=2, q_mode="fold")


@pytest.fixture
def tuned(tmp_path):
    """A database of packed rows (one query, and two query sets), and its vLLM export."""
    db = TunedDB(tmp_path / "user.db")
    for cfg, nq in ((ONE, 1), (TALL, 8), (SHORT, 2)):
        key = BucketKey(gpu="G", cc="9.0", layout="packed", dtype="fp16", precision="native", dim=128,
                        nq_bucket=nq, lq_bucket=32, nb_bucket=1024, ld_bucket=64)
        db.put_winner(key, {"config": cfg.to_dict(), "time_ms": 1.0, "trials": 3, "template_hash": template_hash()})
    folder = tmp_path / "vllm"
    export_vllm(db, folder)
    return db.path, folder


@pytest.mark.parametrize("nq, lq, nb, ld, source, config", [
    (1, 32, 1000, 64, "user-db", ONE),  # the bucket itself
    (1, 32, 5000, 100, "nearest-bucket", ONE),  # one query: never a set's row
    (3, 32, 1000, 64, "nearest-bucket", SHORT),  # 96 rows: the 256-row tile is too tall
    (5, 20, 1000, 64, "user-db", TALL),  # the bucket itself, whatever its tile (100 rows)
    (16, 32, 1000, 64, "nearest-bucket", TALL),  # 512 rows: the nearest set
    (2, 8, 1000, 64, "heuristic", None),  # 16 rows: both set rows too tall
])
def test_runtime_and_vllm_reader_pick_by_one_rule(tuned, nq, lq, nb, ld, source, config):
    db_path, folder = tuned
    gpu = GpuInfo(name="G", cc="9.0", sm_count=132, smem_limit=DEFAULT_SMEM_LIMIT)
    spec = KernelSpec("packed", "fp16", 128)
    key = BucketKey(gpu="G", cc="9.0", layout="packed", dtype="fp16", precision="native", dim=128,
                    nq_bucket=bucket(nq), lq_bucket=bucket(lq), nb_bucket=bucket(nb), ld_bucket=bucket(ld))
    lookup = Lookup(user_path=db_path, shipped_paths=[])
    cfg, got = lookup.decide(spec, key, gpu, {"nq": nq, "lq": lq, "nb": nb, "ld": ld})
    assert got == source and (config is None or cfg == config), (got, cfg.key())
    read = read_vllm_config("maxsim_packed", 128, "fp16", "G", nq=nq, lq=lq, nb=nb, ld=ld, folder=folder)
    assert read == config


def test_vllm_reader_buckets_the_call_as_the_runtime_does(tmp_path):
    folder = tmp_path / "vllm"
    folder.mkdir()
    small, large = KernelConfig(block_d=16), KernelConfig(block_d=64)
    name = "op=maxsim,dim=64,device_name=G,dtype=fp16.json"
    (folder / name).write_text(json.dumps({"triton_version": "3", "nq=1,lq=32,ld=256,nb=64": small.to_dict(),
                                           "nq=1,lq=32,ld=512,nb=64": large.to_dict()}))
    # 300 tokens fall in the 512 bucket, which the runtime would look up, not the nearer 256.
    assert read_vllm_config("maxsim", 64, "fp16", "G", lq=32, nb=64, ld=300, folder=folder) == large
    assert read_vllm_config("maxsim", 64, "fp16", "G", lq=32, nb=64, ld=256, folder=folder) == small
    assert read_vllm_config("maxsim", 64, "fp16", "G", nq=2, lq=32, nb=64, ld=256, folder=folder) is None


def test_vllm_reader_skips_a_bucket_it_cannot_read_and_says_so(tmp_path, caplog):
    folder = tmp_path / "vllm"
    folder.mkdir()
    good = KernelConfig(block_d=32)
    (folder / "op=maxsim,dim=64,device_name=G,dtype=fp16.json").write_text(json.dumps({
        "nq=1,lq=32,ld=512,nb=64": {**good.to_dict(), "warp_size": 7},  # a knob this version lacks
        "nq=1,lq=32,ld=512": good.to_dict(),  # no nb
        "nq=1,lq=32,ld=256,nb=64": good.to_dict(),
    }))
    with caplog.at_level(logging.WARNING, logger="maxsim_forge"):
        assert read_vllm_config("maxsim", 64, "fp16", "G", lq=32, nb=64, ld=512, folder=folder) == good
    assert sum("cannot be read" in r.getMessage() for r in caplog.records) == 2


# ---- one home per concept
def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    return [(node.level, node.module or "") for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level]


def test_no_module_imports_another_packages_private_module():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        package = path.relative_to(PACKAGE).parts[:-1]  # () for the top level
        for level, module in _imports(path):
            target = package[: len(package) - (level - 1)] + tuple(module.split(".")) if module else ()
            # A private module of a subpackage is that subpackage's own business.
            for depth in range(1, len(target)):
                if target[depth].startswith("_") and target[:depth] != package[:depth]:
                    wrong.append(f"{path.relative_to(PACKAGE)}: {'.' * level}{module}")
    assert not wrong, wrong


def test_keys_module_is_cheap():
    # Imported on every call path: torch, the standard library and codegen only, never
    # the tuner, Optuna or the runtime.
    tree = ast.parse((PACKAGE / "_keys.py").read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = {a.name.split(".")[0] for n in top if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in top if isinstance(n, ast.ImportFrom) and not n.level}
    assert names <= {"__future__", "functools", "math", "collections", "dataclasses", "typing", "torch"}, names
    assert {n.module for n in top if isinstance(n, ast.ImportFrom) and n.level} == {"codegen"}
