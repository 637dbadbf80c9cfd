"""Where a call's config comes from (runtime/_lookup.py): user, shipped, nearest bucket,
same architecture, heuristic; stale rows and bad databases."""

from __future__ import annotations

import logging

import pytest
import torch

import maxsim_forge as mf
from maxsim_forge.codegen import KernelConfig, kernel_hash
from maxsim_forge.reference import maxsim_packed_reference, maxsim_reference
from maxsim_forge.runtime import Lookup, reset
from maxsim_forge.tuned_db import TunedDB

from _helpers import CFG_A, CFG_B, _call, _gpu, _winner
from conftest import DEVICE, assert_scores, randn

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("isolated_lookup")]


def test_lookup_order_user_then_shipped_then_nearest_then_same_arch(tmp_path):
    q, d = _call()
    user, shipped = TunedDB(tmp_path / "user.db"), TunedDB(tmp_path / "shipped.db")
    _winner(user, CFG_A)
    _winner(shipped, CFG_B)
    reset(Lookup(user_path=user.path, shipped_paths=[shipped.path]))
    dec = mf.explain(q, d)
    assert (dec.source, dec.config) == ("user-db", CFG_A.to_dict())
    assert_scores(mf.maxsim(q, d), maxsim_reference(q, d), 1e-5, "user-db")

    reset(Lookup(user_path=tmp_path / "none.db", shipped_paths=[shipped.path]))
    assert mf.explain(q, d).source == "shipped-db"
    assert mf.explain(q, d).config == CFG_B.to_dict()

    near = TunedDB(tmp_path / "near.db")
    _winner(near, CFG_A, nb=1024)  # same GPU, another batch bucket
    _winner(near, CFG_B, nb=1 << 20, ld=4096)  # farther away
    reset(Lookup(user_path=near.path, shipped_paths=[]))
    dec = mf.explain(q, d)
    assert (dec.source, dec.config) == ("nearest-bucket", CFG_A.to_dict())
    assert_scores(mf.maxsim(q, d), maxsim_reference(q, d), 1e-5, "nearest")

    arch = TunedDB(tmp_path / "arch.db")
    _winner(arch, CFG_B, gpu="SOME_OTHER_GPU")
    reset(Lookup(user_path=arch.path, shipped_paths=[]))
    dec = mf.explain(q, d)
    assert (dec.source, dec.config) == ("same-arch", CFG_B.to_dict())
    assert_scores(mf.maxsim(q, d), maxsim_reference(q, d), 1e-5, "same-arch")


def test_nearest_bucket_has_as_many_queries_in_kind(tmp_path):
    # A config tuned for one query is no neighbour of a query set (it cannot fold it),
    # and a set's config is none of one query: each kind takes its own or the heuristic.
    d = randn(50, 128)
    cu = torch.tensor([0, 20, 50], dtype=torch.int32, device=DEVICE)
    one, many = randn(32, 128), randn(16, 32, 128)
    db = TunedDB(tmp_path / "user.db")
    _winner(db, CFG_A, layout="packed", nq=1, lq=32, ld=32, nb=2)
    reset(Lookup(user_path=db.path, shipped_paths=[]))
    assert (mf.explain(one, d, cu).source, mf.explain(one, d, cu).config) == ("user-db", CFG_A.to_dict())
    dec = mf.explain(many, d, cu)
    assert dec.source == "heuristic" and dec.config["q_mode"] == "fold", dec
    assert_scores(mf.maxsim_packed(many, d, cu), maxsim_packed_reference(many, d, cu), 1e-5, "heuristic fold")
    _winner(db, CFG_B, layout="packed", nq=8, lq=32, ld=32, nb=2)
    reset(Lookup(user_path=db.path, shipped_paths=[]))
    assert (mf.explain(many, d, cu).source, mf.explain(many, d, cu).config) == ("nearest-bucket", CFG_B.to_dict())
    assert mf.explain(randn(3, 32, 128), d, cu).source == "nearest-bucket"
    assert mf.explain(randn(17, 128), d, cu).config == CFG_A.to_dict()


def test_nearest_bucket_of_a_query_set_has_no_taller_tile(tmp_path):
    # A neighbour's query tile taller than the call's folded rows computes padding rows
    # and keeps a set that fits one tile from the one-tile store: the heuristic instead.
    d = randn(6, 40, 128)
    db = TunedDB(tmp_path / "user.db")
    tall = KernelConfig(block_q=128, block_d=32, block_k=128, num_warps=4, num_stages=2, q_mode="fold")
    _winner(db, tall, layout="allpairs", nq=8, lq=32, ld=64, nb=8)
    reset(Lookup(user_path=db.path, shipped_paths=[]))
    for nq, lq, source in ((2, 32, "heuristic"), (2, 33, "nearest-bucket"), (4, 32, "nearest-bucket"),
                           (3, 7, "heuristic")):
        q = randn(nq, lq, 128)
        dec = mf.explain(q, d)
        assert dec.source == source, (nq, lq, dec)
        if source == "heuristic":
            assert dec.config["block_q"] <= 64, dec
        assert_scores(mf.maxsim(q, d), maxsim_reference(q, d), 1e-5, f"{nq} x {lq}")


def test_full_and_ragged_docs_have_buckets_of_their_own(tmp_path):
    q, d = _call()
    lengths = torch.tensor([40, 7, 1], device=DEVICE)
    db = TunedDB(tmp_path / "user.db")
    _winner(db, CFG_A, docs="full")
    _winner(db, CFG_B, docs="ragged")
    reset(Lookup(user_path=db.path, shipped_paths=[]))
    assert mf.explain(q, d).config == CFG_A.to_dict()
    assert mf.explain(q, d).bucket.endswith("nb4 ld64")
    dec = mf.explain(q, d, d_lengths=lengths)
    assert (dec.config, dec.source) == (CFG_B.to_dict(), "user-db")
    assert dec.bucket.endswith("nb4 ld64 ragged")
    assert_scores(mf.maxsim(q, d, d_lengths=lengths), maxsim_reference(q, d, d_lengths=lengths), 1e-5, "ragged")

    # A row that did not record its docs serves both kinds of its bucket; the nearest
    # bucket prefers rows tuned on the same kind of docs.
    legacy = TunedDB(tmp_path / "legacy.db")
    _winner(legacy, CFG_B, docs="")
    _winner(legacy, CFG_A, docs="ragged", nb=1024)
    reset(Lookup(user_path=legacy.path, shipped_paths=[]))
    assert mf.explain(q, d).config == CFG_B.to_dict()
    assert mf.explain(q, d, d_lengths=lengths).config == CFG_B.to_dict()
    other = TunedDB(tmp_path / "other.db")
    _winner(other, CFG_A, docs="full", nb=16)
    _winner(other, CFG_B, docs="ragged", nb=8)
    reset(Lookup(user_path=other.path, shipped_paths=[]))
    dec = mf.explain(q, d, d_lengths=lengths)
    assert (dec.config, dec.source) == (CFG_B.to_dict(), "nearest-bucket")
    assert mf.explain(q, d).config == CFG_A.to_dict()


def test_stale_template_rows_serve_their_own_bucket(tmp_path, caplog):
    q, d = _call()
    db = TunedDB(tmp_path / "user.db")
    key = _winner(db, CFG_A)
    db.put_winner(key, {**db.winner(key), "template_hash": "0" * 16})
    reset(Lookup(user_path=db.path, shipped_paths=[]))
    with caplog.at_level(logging.WARNING, logger="maxsim_forge"):
        assert (mf.explain(q, d).source, mf.explain(q, d).config) == ("stale-db", CFG_A.to_dict())
        assert mf.explain(q, d[:2]).source == "heuristic"  # no neighbour but its own bucket
    assert "another template version" in caplog.text


def test_rows_stay_valid_while_their_kernels_do(tmp_path, caplog):
    q, d = _call()
    user, shipped = TunedDB(tmp_path / "user.db"), TunedDB(tmp_path / "shipped.db")
    key = _winner(user, CFG_A)
    _winner(shipped, CFG_B)
    g = _gpu()
    # A row of an older template whose kernels are unchanged (its kernel hash matches) is used.
    current = kernel_hash("padded", "fp16", 128, "native", CFG_A)
    user.put_winner(key, {**user.winner(key), "template_hash": "0" * 16, "kernel_hash": current})
    reset(Lookup(user_path=user.path, shipped_paths=[shipped.path]))
    assert (mf.explain(q, d).config, mf.explain(q, d).source) == (CFG_A.to_dict(), "user-db")
    # One whose kernels changed is skipped, reported once, and does not hide the shipped
    # row of the same bucket.
    user.put_winner(key, {**user.winner(key), "kernel_hash": "f" * 16})
    reset(Lookup(user_path=user.path, shipped_paths=[shipped.path]))
    with caplog.at_level(logging.WARNING, logger="maxsim_forge"):
        dec = mf.explain(q, d)
        mf.explain(q, d[:2])
    assert (dec.config, dec.source) == (CFG_B.to_dict(), "shipped-db")
    assert caplog.text.count("another template version") == 1 and g.name in str(key)


@pytest.mark.parametrize("problem", ("missing", "corrupt", "newer"))
def test_bad_database_is_reported_once_and_call_answers(tmp_path, caplog, problem):
    q, d = _call()
    path = tmp_path / "user.db"
    if problem == "corrupt":
        path.write_bytes(b"this is not a database" * 100)
    elif problem == "newer":
        db = TunedDB(path)
        _winner(db, CFG_A)
        db.db.execute("PRAGMA user_version = 99")
        db.db.conn.commit()
    shipped = TunedDB(tmp_path / "shipped.db")
    _winner(shipped, CFG_B)
    reset(Lookup(user_path=path, shipped_paths=[shipped.path]))
    with caplog.at_level(logging.WARNING, logger="maxsim_forge"):
        for _ in range(3):
            out = mf.maxsim(q, d)
        dec = mf.explain(q, d)
    assert dec.source == "shipped-db"
    assert_scores(out, maxsim_reference(q, d), 1e-5, problem)
    reports = [r for r in caplog.records if "user-db" in r.getMessage()]
    assert len(reports) == 1, [r.getMessage() for r in caplog.records]
