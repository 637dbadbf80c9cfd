"""Guards against the failure modes found by probing maxsim-forge as an attacker, a
careless operator and a fleet of tuning processes would; each test is named after what
it guards."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import pickle
import shutil
import signal
import sqlite3
import stat
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import maxsim_forge as mf
from maxsim_forge._inputs import prepare_packed, prepare_padded
from maxsim_forge._keys import GpuInfo, gpu_info
from maxsim_forge.cli import main
from maxsim_forge.codegen import KernelConfig, KernelSpec, kernel_hash, load_variant, template_hash
from maxsim_forge.reference import maxsim_reference, reference_for
from maxsim_forge.runtime import Lookup, largest_dim, reset
from maxsim_forge.runtime import _lookup
from maxsim_forge.runtime._eager import eager_scores
from maxsim_forge.tuned_db import BucketKey, RowError, TunedDB, _schema, check_winner, merge_rows

from conftest import DEVICE, assert_scores, randn

# ---- one NaN and inf rule on every path (kernels, torch fallback, reference)

# Configs that take every way of taking a max: per tile, overlapped, deferred, the
# persistent grid, folded rows in one tile and in several, a doc split's reduce kernel.
NAN_CONFIGS = [
    KernelConfig(block_q=16, block_d=16, block_k=32, q_mode="loop"),
    KernelConfig(block_q=16, block_d=16, block_k=32, q_mode="grid", overlap_max=True),
    KernelConfig(block_q=16, block_d=16, block_k=32, q_mode="tile", defer_max=True, masked_loop=True),
    KernelConfig(block_q=16, block_d=16, block_k=16, q_mode="loop", split_d=2),
    KernelConfig(block_q=64, block_d=16, block_k=32, q_mode="fold"),
    KernelConfig(block_q=16, block_d=16, block_k=32, q_mode="fold", split_d=2),
    KernelConfig(block_q=16, block_d=16, block_k=32, q_mode="persist", defer_max=True),
    KernelConfig(block_q=32, block_d=16, block_k=32, q_mode="persist"),
]
SEED = 1905


def _poisoned(kind: str, poison: float):
    """3 queries x 5 docs, dim 32, with query lengths and a doc mask: the poison goes into
    a valid token (``valid-doc``, ``valid-query``) or into masked and padded ones only."""
    gen = torch.Generator().manual_seed(SEED)
    q = torch.randn(3, 9, 32, generator=gen)
    d = torch.randn(5, 21, 32, generator=gen)
    q_lengths = torch.tensor([9, 5, 7])
    d_mask = torch.rand(5, 21, generator=gen) > 0.3
    d_mask[3] = False  # a doc with no valid token scores 0 whatever it holds
    clean = prepare_padded(q.clone(), d.clone(), q_lengths=q_lengths, d_mask=d_mask)
    if kind == "valid-doc":
        d[1, int(d_mask[1].nonzero()[0]), 4] = poison
    elif kind == "valid-query":
        q[2, 3, 7] = poison
    else:  # masked and padded tokens only
        q[1, 5:] = poison
        d[~d_mask] = poison
    return clean, prepare_padded(q, d, q_lengths=q_lengths, d_mask=d_mask, check_values=False)


def _expected(kind: str, clean) -> torch.Tensor:
    want = reference_for(clean).float()
    if kind == "valid-doc":
        want[:, 1] = float("nan")
    elif kind == "valid-query":
        want[2, [0, 1, 2, 4]] = float("nan")  # doc 3 has no valid token: 0 still
    return want


def _same(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    for name, test in (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
        at, want_at = test(got), test(want)
        assert torch.equal(at, want_at), (
            f"{what}: {name} at {at.nonzero().tolist()}, want {want_at.nonzero().tolist()} (seed {SEED})")
    finite = torch.isfinite(want)
    err = (got[finite] - want[finite]).abs().max().item() if finite.any() else 0.0
    assert err < 1e-3, f"{what}: max error {err} on the finite scores (seed {SEED})"


@pytest.mark.parametrize("kind, poison", [
    ("valid-doc", float("nan")), ("valid-query", float("nan")), ("masked-only", float("nan")),
    ("masked-only", float("inf")), ("masked-only", -float("inf")),
])
def test_nan_rule_holds_on_kernels_fallback_and_reference(kind, poison):
    clean, prep = _poisoned(kind, poison)
    want = _expected(kind, clean)
    _same(reference_for(prep).float(), want, f"reference, {kind}")
    _same(eager_scores(prep), want, f"torch fallback, {kind}")
    for cfg in NAN_CONFIGS:
        try:
            variant = load_variant(prep.spec, cfg)
        except ValueError:
            continue  # a mode this layout does not take
        got = variant.launch(prep.q, prep.d, **prep.launch_kwargs)
        _same(got, want, f"kernel {variant.name}, {kind}")


def test_an_inf_in_a_valid_token_follows_ieee_on_every_path():
    clean, prep = _poisoned("valid-doc", float("inf"))
    ref = reference_for(prep).float()
    assert not torch.isfinite(ref[:, 1]).all(), "the poison did not reach a score"
    _same(eager_scores(prep), ref, "torch fallback")
    for cfg in NAN_CONFIGS[:4]:
        variant = load_variant(prep.spec, cfg)
        _same(variant.launch(prep.q, prep.d, **prep.launch_kwargs), ref, f"kernel {variant.name}")


def test_nan_in_packed_padding_changes_nothing():
    gen = torch.Generator().manual_seed(SEED)
    q = torch.randn(2, 6, 32, generator=gen)
    d = torch.randn(30, 32, generator=gen)
    cu = torch.tensor([0, 7, 7, 19, 30], dtype=torch.int32)
    q_mask = torch.ones(2, 6, dtype=torch.bool)
    q_mask[0, 4:] = False
    clean = prepare_packed(q.clone(), d, cu, q_mask=q_mask)
    q[0, 4:] = float("nan")
    prep = prepare_packed(q, d, cu, q_mask=q_mask, check_values=False)
    want = reference_for(clean).float()
    _same(reference_for(prep).float(), want, "reference")
    _same(eager_scores(prep), want, "torch fallback")
    for cfg in (KernelConfig(block_q=16, block_d=16, block_k=32, q_mode="fold"),
                KernelConfig(block_q=16, block_d=16, block_k=32, q_mode="loop", split_d=2)):
        _same(load_variant(prep.spec, cfg).launch(prep.q, prep.d, **prep.launch_kwargs), want, cfg.key())


# ---- shared set-up of the database, process and command-line guards

CFG_A = KernelConfig(block_q=32, block_d=16, block_k=64, num_warps=2, num_stages=2)
CFG_B = KernelConfig(block_q=16, block_d=32, block_k=128, num_warps=4, num_stages=1)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No user or shipped database unless a test makes one; kernels from the first call."""
    monkeypatch.setenv("MAXSIM_FORGE_DB", str(tmp_path / "absent-user.db"))
    monkeypatch.delenv("MAXSIM_FORGE_DISABLE", raising=False)
    monkeypatch.setenv("MAXSIM_FORGE_COMPILE", "blocking")
    reset(Lookup(user_path=tmp_path / "absent-user.db", shipped_paths=[]))
    yield
    reset()


def _key(*, gpu=None, nb=4, ld=64, lq=32, dim=128, layout="padded", docs="full") -> BucketKey:
    g = gpu_info(torch.device(DEVICE))
    return BucketKey(gpu=gpu or g.name, cc=g.cc, layout=layout, dtype="fp16", precision="native", dim=dim,
                     nq_bucket=1, lq_bucket=lq, nb_bucket=nb, ld_bucket=ld, docs=docs)


def _row(cfg: KernelConfig, *, time_ms=1.0, stale=False, **extra) -> dict:
    """A winner's values: current (its kernel hash is today's) unless ``stale``."""
    khash = "f" * 16 if stale else kernel_hash("padded", "fp16", 128, "native", cfg)
    return {"config": cfg.to_dict(), "time_ms": time_ms, "baseline_ms": 2.0, "speedup": 2.0 / time_ms,
            "near_best": [], "trials": 3, "seed": 0, "template_hash": template_hash(), "kernel_hash": khash,
            **extra}


def _put(path: Path, key: BucketKey, row: dict) -> None:
    """Store one winner and close the file (no connection left to hold a lock or a WAL)."""
    with TunedDB(path) as db:
        db.put_winner(key, row)


def _call():
    return randn(32, 128), randn(3, 40, 128)  # buckets: lq 32, ld 64, nb 4


def _one_error(result, code: int, *needles: str) -> str:
    """The command failed with ``code`` and one ``Error:`` line last, no traceback."""
    assert isinstance(result.exception, SystemExit), f"{result.exception!r}: {result.output}"
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert lines and lines[-1].startswith("Error: "), result.output
    assert sum(line.startswith("Error:") for line in lines) == 1 and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in lines[-1], f"{needle!r} not in {lines[-1]!r}"
    return lines[-1]


def _rollback_journal(path: Path) -> None:
    """Leave ``path`` in rollback-journal mode, as shipped files are."""
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode = DELETE")
    con.close()


def _unprivileged(fn, *args):
    """``fn(*args)`` in a forked child that cannot write what only root may (it drops to
    nobody when this runs as root, where mode bits bind nobody); returns its result."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no return from here
        os.close(read)
        signal.alarm(60)
        try:
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            out = ("ok", fn(*args))
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            out = ("error", f"{type(exc).__name__}: {exc}")
        with os.fdopen(write, "wb") as fh:
            fh.write(pickle.dumps(out))
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    status, value = pickle.loads(data)
    assert status == "ok", value
    return value


@pytest.fixture
def shared_dir():
    """A folder another user may read (pytest's own are private to this one)."""
    path = Path(tempfile.mkdtemp(prefix="maxsim-forge-test-"))
    path.chmod(0o755)
    yield path
    for root, dirs, _ in os.walk(path):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
    path.chmod(0o755)
    shutil.rmtree(path)


# ---- A: a stale row serves its own bucket (DESIGN.md, "Lookup at run time")

def test_a_stale_row_serves_its_own_bucket_after_current_rows_and_before_neighbours(tmp_path, caplog, isolated):
    q, d = _call()
    db = TunedDB(tmp_path / "user.db")
    db.put_winner(_key(), _row(CFG_A, stale=True))
    db.put_winner(_key(nb=1024), _row(CFG_B))  # a current neighbour
    reset(Lookup(user_path=db.path, shipped_paths=[]))
    with caplog.at_level(logging.WARNING, logger="maxsim_forge"):
        dec = mf.explain(q, d)
        assert (dec.source, dec.config, dec.stale) == ("stale-db", CFG_A.to_dict(), True)
        assert "stale" in str(dec)
        assert_scores(mf.maxsim(q, d), maxsim_reference(q, d), 1e-5, "stale row")
        # Another bucket takes the current neighbour, never the stale row next door.
        dec = mf.explain(q, d[:2])
        assert (dec.source, dec.config) == ("nearest-bucket", CFG_B.to_dict())
        mf.explain(q, d[:1])
    stale = [r for r in caplog.records if "another template version: stale" in r.getMessage()]
    assert len(stale) == 1, caplog.text
    # A current row of the bucket, from any source, comes first.
    shipped = TunedDB(tmp_path / "shipped.db")
    shipped.put_winner(_key(), _row(CFG_B))
    reset(Lookup(user_path=db.path, shipped_paths=[shipped.path]))
    assert (mf.explain(q, d).source, mf.explain(q, d).config) == ("shipped-db", CFG_B.to_dict())
    # A stale config that does not fit the device serves nothing: the heuristic.
    small = GpuInfo(name=_key().gpu, cc="0.0", sm_count=4, smem_limit=6000)  # CFG_A needs 8192
    lookup = Lookup(user_path=db.path, shipped_paths=[])
    sizes = {"nq": 1, "lq": 32, "nb": 3, "ld": 40}
    assert lookup.decide(KernelSpec("padded", "fp16", 128), _key(), small, sizes)[1] == "heuristic"


# ---- finding 2: no file outside the target; a vLLM file's "_winner" never sets the key

def test_vllm_export_writes_no_file_outside_its_folder(tmp_path):
    from maxsim_forge.integrations.vllm import export_vllm

    db = TunedDB(tmp_path / "run.db")
    db.put_winner(_key(gpu="x/../../../evil"), _row(CFG_A))
    db.put_winner(_key(gpu="..", nb=8), _row(CFG_A))
    out = tmp_path / "a" / "b" / "out"
    out.parent.mkdir(parents=True)
    with pytest.raises(ValueError, match="cannot be part of a file name"):
        export_vllm(db, out)
    result = CliRunner().invoke(main, ["export", "--format", "vllm", "--db", str(db.path), "--out", str(out)])
    _one_error(result, 1, str(db.path), "cannot be part of a file name")
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix == ".json"]
    assert written == [], written


def test_vllm_winner_block_cannot_set_the_key(tmp_path):
    from maxsim_forge.integrations.vllm import import_vllm

    folder = tmp_path / "configs"
    folder.mkdir()
    gpu = _key().gpu
    name = f"op=maxsim,dim=128,device_name={gpu},dtype=fp16.json"
    winner = {"time_ms": 1.0, "gpu": "OTHER_GPU", "layout": "packed", "config": {"q_mode": "fold"}}
    (folder / name).write_text(json.dumps({"nq=1,lq=32,ld=64,nb=4,docs=full": {**CFG_A.to_dict(), "_winner": winner}}))
    db = TunedDB(tmp_path / "dst.db")
    with pytest.raises(ValueError, match=r"_winner sets \['config', 'gpu', 'layout'\]"):
        import_vllm(db, folder)
    assert db.winners() == []
    result = CliRunner().invoke(main, ["import", "--format", "vllm", "--db", str(db.path), str(folder)])
    _one_error(result, 1, "_winner sets", "gpu")
    # Without the key fields the same bucket imports under the key its file name gives.
    winner = {"time_ms": 1.0, "cc": "9.0"}
    (folder / name).write_text(json.dumps({"nq=1,lq=32,ld=64,nb=4,docs=full": {**CFG_A.to_dict(), "_winner": winner}}))
    assert import_vllm(db, folder) == 1
    (row,) = db.winners()
    assert (row["gpu"], row["layout"], row["config"]) == (gpu, "padded", CFG_A.to_dict())


# ---- finding 3: one schema for every row read from outside; a bad row never stops scoring

def _plant_bad_rows(path: Path) -> None:
    """Rows whose config is no JSON, whose knob is a list, whose near_best is no JSON,
    whose warp count is 2.0: each in a bucket of its own beside one good row."""
    con = sqlite3.connect(path)
    good = con.execute("SELECT * FROM winners").fetchone()
    cols = [c[1] for c in con.execute("PRAGMA table_info(winners)")]
    bad = {16: {"config": "{not json"}, 32: {"config": json.dumps({**CFG_A.to_dict(), "block_q": [32]})},
           64: {"near_best": "[oops"}, 128: {"config": json.dumps({**CFG_A.to_dict(), "num_warps": 2.0})}}
    with con:
        for nb, change in bad.items():
            row = {**dict(zip(cols, good)), "nb_bucket": nb, **change}
            con.execute(f"INSERT INTO winners ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                        [row[c] for c in cols])
    con.close()


def test_a_bad_row_is_skipped_reported_once_and_the_rest_serves(tmp_path, caplog, isolated):
    q, d = _call()
    path = tmp_path / "user.db"
    _put(path, _key(), _row(CFG_A))
    _plant_bad_rows(path)
    reset(Lookup(user_path=path, shipped_paths=[]))
    with caplog.at_level(logging.WARNING, logger="maxsim_forge"):
        assert (mf.explain(q, d).source, mf.explain(q, d).config) == ("user-db", CFG_A.to_dict())
        for nb in (16, 32, 64, 128):  # each bad row's own bucket: a neighbour serves
            qq, dd = randn(32, 128), randn(nb, 40, 128)
            assert mf.explain(qq, dd).source == "nearest-bucket"
        assert_scores(mf.maxsim(q, d), maxsim_reference(q, d), 1e-5, "beside bad rows")
        db = TunedDB(path)
        assert len(db.winners()) == 1 and db.winner(_key(nb=16)) is None
        db.winners()
    for nb, field in ((16, "field config: is not JSON"), (32, "field config.block_q"), (64, "field near_best"),
                      (128, "field config.num_warps")):
        where = f"{path}: row {_key(nb=nb).gpu} padded/fp16/dim128 nq1 lq32 nb{nb} ld64"
        lines = [r.getMessage() for r in caplog.records if where in r.getMessage() and field in r.getMessage()]
        assert len(lines) == 2, (nb, caplog.text)  # once by the lookup, once by this process's readers
    # db show marks them; db verify lists them and fails; warmup compiles the good one.
    shown = CliRunner().invoke(main, ["db", "show", "--db", str(path)])
    assert shown.exit_code == 0, shown.output
    assert shown.output.count("BAD ROW") == 4 and "config.num_warps" in shown.output, shown.output
    verified = CliRunner().invoke(main, ["db", "verify", "--db", str(path)])
    assert verified.exit_code == 1 and verified.output.count("bad_row") == 4, verified.output
    assert " ok " in verified.output, verified.output
    assert len(mf.warmup(device=DEVICE)) >= 1


@pytest.mark.parametrize("field, value, named", [
    ("config", {**CFG_A.to_dict(), "num_warps": True}, "config.num_warps"),
    ("config", {**CFG_A.to_dict(), "split_d": 1.0}, "config.split_d"),
    ("config", {**CFG_A.to_dict(), "q_mode": ["loop"]}, "config.q_mode"),
    ("config", "{not json", "config"),
    ("near_best", "[oops", "near_best"),
    ("dim", True, "dim"),
    ("layout", "ragged", "layout"),
    ("time_ms", float("nan"), "time_ms"),
    ("extra", 1, "extra"),
])
def test_db_import_refuses_a_row_that_breaks_the_schema(tmp_path, field, value, named):
    row = {**_key().as_row(), **_row(CFG_A), field: value}
    export = tmp_path / "e.json"
    export.write_text(json.dumps({"format": "maxsim-forge-db", "version": 1,
                                  "winners": [{**_key(nb=8).as_row(), **_row(CFG_B)}, row]}))
    target = tmp_path / "t.db"
    result = CliRunner().invoke(main, ["db", "import", "--db", str(target), str(export)])
    _one_error(result, 1, str(export), "#1" if field == "dim" else "/fp16/dim128 nq1 lq32 nb4 ld64", named)
    assert TunedDB(target).winners() == [], "a refused import stores nothing"
    with pytest.raises(RowError) as err:
        check_winner(row, where="x.json", index=0)
    assert err.value.field.startswith(named), err.value


# ---- finding 4: concurrent tuning never loses the faster current winner, nor races the migration

def _processes():
    """Worker processes that start quickly and share nothing with this one (no inherited
    SQLite connection or lock): forked from a server that imported the package once."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["maxsim_forge.tuned_db"])
    return ctx


def _offer_after(path: str, row: dict, ready) -> None:
    ready.set()
    merge_rows(TunedDB(path), [row])


def _open_fresh(path: str, start, nb: int, time_ms: float, out) -> None:
    try:
        start.wait(30)
        db = TunedDB(path)
        merge_rows(db, [{**_key(nb=nb).as_row(), **_row(CFG_A, time_ms=time_ms)}])
        out.put("ok")
    except Exception as exc:  # noqa: BLE001 - reported to the test
        out.put(f"{type(exc).__name__}: {exc}")


def test_a_write_compares_with_the_stored_winner_inside_its_transaction(tmp_path):
    # Another process's faster winner lands while this one's slower winner waits for the
    # write lock: the faster stays.
    path = tmp_path / "t.db"
    _put(path, _key(), _row(CFG_A, time_ms=20.0))
    ctx = _processes()
    ready = ctx.Event()
    writer = sqlite3.connect(path, check_same_thread=False)
    writer.execute("PRAGMA busy_timeout = 10000")
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE winners SET time_ms = 10.0")
    slower = {**_key().as_row(), **_row(CFG_A, time_ms=15.0)}
    proc = ctx.Process(target=_offer_after, args=(str(path), slower, ready))
    proc.start()
    try:
        assert ready.wait(60), "the writer process did not start"
        time.sleep(0.5)  # it has read the stored row and waits for the lock
        writer.commit()
        proc.join(60)
    finally:
        writer.close()
        if proc.is_alive():
            proc.kill()
    assert proc.exitcode == 0
    assert TunedDB(path).winner(_key())["time_ms"] == 10.0


def test_processes_opening_a_fresh_database_at_once_never_race_the_migration(tmp_path):
    ctx = _processes()
    n = 4
    start, out = ctx.Event(), ctx.Queue()
    path = tmp_path / "fresh.db"
    procs = [ctx.Process(target=_open_fresh, args=(str(path), start, 1 << i, 2.0 - i / 10, out)) for i in range(n)]
    for p in procs:
        p.start()
    start.set()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert results == ["ok"] * n, results
    assert len(TunedDB(path).winners()) == n


def test_a_tune_run_keeps_a_faster_stored_winner(tmp_path):
    from maxsim_forge.tuner import Bucket, tune

    bucket = Bucket(layout="padded", dtype="fp16", dim=32, lq=8, nb=3, ld=20)
    db_path = tmp_path / "t.db"
    tune([bucket], db_path=db_path, trials=2, progress=False, workers=1)
    db = TunedDB(db_path)
    (row,) = db.winners()
    key = BucketKey.from_row(row)
    db.put_winner(key, {**row, "time_ms": 1e-6})  # as if another process had found a faster one
    tune([bucket], db_path=db_path, trials=2, progress=False, workers=1)
    assert db.winner(key)["time_ms"] == 1e-6
    # A row cut short by the time budget, or found in an older search space, is replaced.
    for change in ({"cut": 1}, {"space_hash": "0" * 16}):
        db.put_winner(key, {**row, "time_ms": 1e-6, **change})
        tune([bucket], db_path=db_path, trials=2, progress=False, workers=1)
        assert db.winner(key)["time_ms"] > 1e-6, change


def test_db_merge_prefers_a_current_row_over_a_faster_stale_one(tmp_path):
    target, other = TunedDB(tmp_path / "target.db"), TunedDB(tmp_path / "other.db")
    target.put_winner(_key(), _row(CFG_A, time_ms=5.0))
    other.put_winner(_key(), _row(CFG_B, time_ms=1.0, stale=True))
    result = CliRunner().invoke(main, ["db", "merge", "--db", str(target.path), str(other.path)])
    assert result.exit_code == 0 and "took 0" in result.output, result.output
    assert target.winner(_key())["config"] == CFG_A.to_dict()
    other.put_winner(_key(), _row(CFG_B, time_ms=1.0))  # current and faster: taken
    result = CliRunner().invoke(main, ["db", "merge", "--db", str(target.path), str(other.path)])
    assert result.exit_code == 0 and "took 1" in result.output, result.output
    assert target.winner(_key())["config"] == CFG_B.to_dict()
    # A stale stored row gives way to a current one, even a slower one.
    target.put_winner(_key(), _row(CFG_A, time_ms=0.5, stale=True))
    assert merge_rows(target, [{**_key().as_row(), **_row(CFG_B, time_ms=3.0)}]) == 1


# ---- finding 6: a valid database is read, in a read-only folder or held by a writer for a moment

def _load_rows(path: str) -> tuple[int, list[str]]:
    lookup = Lookup(user_path=Path(path), shipped_paths=[]).load()
    return sum(len(v) for v in lookup.exact.values()), lookup.reports


def test_a_wal_database_in_a_read_only_folder_is_read(shared_dir):
    folder = shared_dir / "data"
    folder.mkdir()
    path = folder / "user.db"
    _put(path, _key(), _row(CFG_A))  # WAL mode; closing leaves no -wal, no -shm
    path.chmod(0o644)
    assert sorted(p.name for p in folder.iterdir()) == ["user.db"]
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    rows, reports = _unprivileged(_load_rows, str(path))
    assert (rows, reports) == (1, [])
    shown = _unprivileged(lambda: CliRunner().invoke(main, ["db", "show", "--db", str(path)]).output)
    assert "bq32-bdoc16" in shown, shown


def test_a_database_a_writer_holds_is_read_after_a_short_wait_or_at_a_later_lookup(tmp_path, monkeypatch,
                                                                                    isolated):
    q, d = _call()
    path = tmp_path / "user.db"
    _put(path, _key(), _row(CFG_A))
    _rollback_journal(path)
    writer = sqlite3.connect(path, check_same_thread=False)
    writer.execute("BEGIN EXCLUSIVE")  # readers wait, as during a commit
    # Freed within the wait: read at once.
    threading.Timer(0.1, writer.rollback).start()
    rows, reports = _load_rows(str(path))
    assert (rows, reports) == (1, [])
    # Held past it: the lookup goes on after a bounded wait, and reads it at a later lookup.
    writer.execute("BEGIN EXCLUSIVE")
    monkeypatch.setattr(_lookup, "RETRY_S", 0.0)
    lookup = Lookup(user_path=path, shipped_paths=[])
    t0 = time.monotonic()
    lookup.load()
    assert time.monotonic() - t0 < 2.0, "a held database stalls the lookup"
    assert lookup.pending and [r for r in lookup.reports if "held by a writer" in r]
    reset(lookup)
    assert mf.explain(q, d).source == "heuristic"
    writer.rollback()
    writer.close()
    dec = mf.explain(q, d)
    assert (dec.source, dec.config) == ("user-db", CFG_A.to_dict())
    assert_scores(mf.maxsim(q, d), maxsim_reference(q, d), 1e-5, "read late")


# ---- finding 7: read-only commands open read-only, create nothing, switch nothing to WAL

READ_COMMANDS = [
    ["db", "show"], ["db", "export", "--out", "{out}/e.json"], ["export", "--format", "json", "--out", "{out}/f.json"],
    ["export", "--format", "vllm", "--out", "{out}/vllm"], ["db", "verify"],
]


@pytest.mark.parametrize("command", READ_COMMANDS, ids=lambda c: " ".join(c[:3]))
def test_read_only_commands_never_write_their_database(tmp_path, command):
    data = tmp_path / "data"
    data.mkdir()
    path = data / "small.db"
    _put(path, _key(), _row(CFG_A))
    _rollback_journal(path)
    before = path.read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    args = [a.format(out=out) for a in command]
    result = CliRunner().invoke(main, [*args, "--db", str(path)])
    assert result.exit_code == 0, result.output
    assert path.read_bytes() == before, "the database was written"
    assert sorted(p.name for p in data.iterdir()) == ["small.db"], "a journal or WAL was left beside it"
    missing = data / "typo.db"
    result = CliRunner().invoke(main, [*args, "--db", str(missing)])
    _one_error(result, 2, "--db", f"no tuned database at {missing}")
    assert not missing.exists()


# ---- finding 8: every command-line mistake ends in one "Error:" line, never a traceback

@pytest.fixture
def files(tmp_path, monkeypatch):
    """A good database, a corrupt one, one of a newer schema, one a writer holds, a
    shapes file, a JSON export, a folder, a plain file; waits for a held database cut short."""
    good = tmp_path / "good.db"
    _put(good, _key(), _row(CFG_A))
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a database" * 100)
    newer = tmp_path / "newer.db"
    with TunedDB(newer) as db:
        db.db.execute("PRAGMA user_version = 99")
    locked = tmp_path / "locked.db"
    _put(locked, _key(), _row(CFG_A))
    _rollback_journal(locked)
    holder = sqlite3.connect(locked, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    monkeypatch.setattr(_schema, "READ_WAIT_S", 0.2)
    monkeypatch.setattr(_schema, "WRITE_WAIT_S", 0.2)
    shapes = tmp_path / "shapes.json"
    shapes.write_text(json.dumps([{"layout": "padded", "dtype": "fp16", "dim": 32, "lq": 8, "ld": 16, "nb": 3}]))
    export = tmp_path / "export.json"
    export.write_text(json.dumps({"format": "maxsim-forge-db", "version": 1,
                                  "winners": [{**_key().as_row(), **_row(CFG_A)}]}))
    (tmp_path / "folder").mkdir()
    (tmp_path / "plain").write_text("x")
    yield {"good": good, "corrupt": corrupt, "newer": newer, "locked": locked, "shapes": shapes,
           "export": export, "tmp": tmp_path}
    holder.rollback()
    holder.close()


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


def test_warmup_without_cuda_says_what_to_do(isolated):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    with pytest.raises(RuntimeError, match="none is available here.*device='cpu' with TRITON_INTERPRET=1"):
        mf.warmup()
    with pytest.raises(ValueError, match="bucket 0 lacks dtype"):
        mf.warmup([{"layout": "padded"}], device="cpu")


def test_a_dim_above_what_the_kernels_take_is_scored_by_torch_and_named(isolated):
    q, d = randn(4, 3600), randn(2, 5, 3600)
    dec = mf.explain(q, d)
    assert dec.source == "torch-fallback" and "dim 3600" in dec.variant and "(3584)" in dec.variant, dec
    assert_scores(mf.maxsim(q, d), maxsim_reference(q, d), 1e-5, "dim 3600")
    assert mf.explain(randn(4, 3584), randn(2, 5, 3584)).source == "heuristic"
    assert (largest_dim("fp16"), largest_dim("bf16"), largest_dim("fp32")) == (3584, 3584, 1792)


def test_a_folder_as_the_user_database_is_named(tmp_path, caplog, isolated):
    folder = tmp_path / "db-folder"
    folder.mkdir()
    with caplog.at_level(logging.WARNING, logger="maxsim_forge"):
        lookup = Lookup(user_path=folder, shipped_paths=[]).load()
    assert [r for r in lookup.reports if "is a folder, not a database file" in r], lookup.reports
    assert "disk I/O" not in caplog.text
