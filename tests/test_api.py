"""The public API (runtime/_api.py): every entry point against float64, fallbacks, the
background compile, threads, repeated calls and bad input."""

from __future__ import annotations

import logging
import threading
import time

import pytest
import torch

import maxsim_forge as mf
from maxsim_forge.reference import maxsim_packed_reference, maxsim_pairs_reference, maxsim_reference
from maxsim_forge.runtime import Lookup, reset

from _helpers import _call
from conftest import DEVICE, assert_scores, randn

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("isolated_lookup")]


@pytest.mark.parametrize("dim", (48, 96, 128))
@pytest.mark.parametrize("nq", (1, 16))
@pytest.mark.parametrize("sides", ("plain", "lengths", "masks"))
def test_maxsim_padded_and_allpairs(dim, nq, sides):
    q = randn(nq, 7 if nq > 1 else 33, dim) if nq > 1 else randn(33, dim)
    d = randn(5, 57, dim, dtype=torch.bfloat16 if dim == 96 else torch.float16)
    q = q.to(d.dtype)
    kw = {}
    if sides == "lengths":
        kw["d_lengths"] = torch.tensor([57, 0, 1, 30, 7], device=DEVICE)
        if nq > 1:
            kw["q_lengths"] = torch.randint(0, q.shape[1] + 1, (nq,), device=DEVICE)
    elif sides == "masks":
        kw["d_mask"] = torch.rand(5, 57, device=DEVICE) > 0.5
        kw["q_mask"] = (torch.rand(*q.shape[:-1], device=DEVICE) > 0.3)
    out = mf.maxsim(q, d, **kw)
    assert out.shape == ((5,) if nq == 1 else (nq, 5)) and out.dtype == torch.float32
    assert_scores(out, maxsim_reference(q, d, **kw), 1e-5, f"maxsim {sides}")
    assert "torch" not in mf.explain(q, d, **kw).variant


@pytest.mark.parametrize("nq", (1, 16))
def test_maxsim_packed(nq):
    lens = torch.tensor([0, 1, 7, 33, 257, 5])
    cu = torch.zeros(7, dtype=torch.int32)
    cu[1:] = lens.cumsum(0)
    d = randn(int(cu[-1]), 96)
    q = randn(nq, 9, 96) if nq > 1 else randn(9, 96)
    cu = cu.to(DEVICE)
    out = mf.maxsim_packed(q, d, cu)
    assert_scores(out, maxsim_packed_reference(q, d, cu), 1e-5, "packed")


def test_maxsim_pairs_ragged_and_empty():
    q_lens, d_lens = [1, 33, 7, 0, 12], [7, 0, 257, 4, 1]
    queries = [randn(n, 48) for n in q_lens]
    docs = [randn(n, 48) for n in d_lens]
    out = mf.maxsim_pairs(queries, docs)
    assert out.shape == (5,) and out[1].item() == 0 and out[3].item() == 0
    assert_scores(out, maxsim_pairs_reference(queries, docs), 1e-5, "pairs")
    assert mf.maxsim_pairs([], []).shape == (0,)


def test_explain_names_generated_variant_and_heuristic_source():
    q, d = randn(32, 128), randn(3, 40, 128)
    decision = mf.explain(q, d)
    assert decision.source == "heuristic"
    assert decision.variant.startswith("padded-fp16-dim128") and decision.config["block_q"] >= 16
    assert decision.layout == "padded"


def test_disable_forces_torch_reference(monkeypatch):
    q, d = _call()
    monkeypatch.setenv("MAXSIM_FORGE_DISABLE", "1")
    reset(Lookup(user_path=None, shipped_paths=[]))
    dec = mf.explain(q, d)
    assert dec.source == "torch-fallback" and dec.config is None
    assert_scores(mf.maxsim(q, d), maxsim_reference(q, d), 1e-5, "disabled")


def test_miss_is_logged_once_per_bucket(caplog):
    q, d = _call()
    with caplog.at_level(logging.INFO, logger="maxsim_forge"):
        for _ in range(4):
            mf.maxsim(q, d)
    assert sum("no tuned config" in r.getMessage() for r in caplog.records) == 1


def test_threads_get_correct_results():
    cases = []
    for i in range(6):
        q, d = randn(8 + i, 64), randn(3, 20 + 3 * i, 64)
        cases.append((q, d, maxsim_reference(q, d)))
    errors = []

    def work(k):
        try:
            for j in range(3):
                q, d, ref = cases[(k + j) % len(cases)]
                assert_scores(mf.maxsim(q, d), ref, 1e-5, f"thread {k}")
        except Exception as exc:  # noqa: BLE001 - collected and re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_bad_input_raises_before_launch():
    with pytest.raises(ValueError, match="d has 64 features but q has 128"):
        mf.maxsim(randn(4, 128), randn(2, 5, 64))
    with pytest.raises(ValueError, match="queries has 1 items but docs has 2"):
        mf.maxsim_pairs([randn(3, 8)], [randn(2, 8), randn(2, 8)])
    with pytest.raises(ValueError, match="cu_seqlens starts at 2"):
        mf.maxsim_packed(randn(4, 8), randn(9, 8), torch.tensor([2, 9], device=DEVICE))


def test_repeated_calls_stay_correct_on_every_path():
    # The second and later calls of a signature take the fast path on a GPU.
    d = randn(6, 40, 64)
    for _ in range(3):
        q = randn(9, 64)
        q_mask = torch.rand(9, device=DEVICE) > 0.3
        d_len = torch.randint(0, 41, (6,), device=DEVICE)
        for kw in ({}, {"q_mask": q_mask}, {"q_lengths": torch.tensor(5, device=DEVICE)},
                   {"d_lengths": d_len}, {"d_lengths": d_len[::1].clone(), "q_mask": q_mask}):
            for validate in (True, False):
                out = mf.maxsim(q, d, validate=validate, **kw)
                assert_scores(out, maxsim_reference(q, d, **kw), 1e-5, f"repeat {sorted(kw)} {validate}")
        strided = torch.randint(0, 41, (12,), device=DEVICE)[::2]
        assert_scores(mf.maxsim(q, d, d_lengths=strided, validate=False),
                      maxsim_reference(q, d, d_lengths=strided), 1e-5, "strided lengths")


def test_repeated_pairs_stay_correct_on_every_path():
    # On a GPU the second and later calls of a bucket take the pairs fast path, with new
    # lengths each time. Token rows of a multiple of 16 bytes pack both sides into one
    # buffer (the docs start aligned); other rows pack each side on its own.
    from maxsim_forge._pairs import _try_concat_pairs
    from maxsim_forge.runtime import _api

    for dim, dtype, shared in ((48, torch.float16, True), (100, torch.float16, False), (5, torch.float32, False)):
        for i in range(3):
            q_lens, d_lens = [9 + i, 1, 16 - i], [40 - i, 3, 17 + 2 * i]
            queries = [randn(n, dim, dtype=dtype) for n in q_lens]
            docs = [randn(n, dim, dtype=dtype) for n in d_lens]
            out = mf.maxsim_pairs(queries, docs, precision="ieee")
            assert_scores(out, maxsim_pairs_reference(queries, docs), 1e-5, f"pairs dim {dim} call {i}")
            _, _, q, d = _try_concat_pairs(queries, docs)
            assert (q.untyped_storage().data_ptr() == d.untyped_storage().data_ptr()) == shared
            assert d.data_ptr() % 16 == 0 or not shared
        if DEVICE == "cuda":
            assert any(sig[0] == "pairs" and (sig[3], sig[4], sig[1]) == (dtype, dim, "ieee")
                       for sig in _api._plans), dim


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need a GPU")
def test_cuda_graph_capture_and_replay():
    q, d = randn(32, 128), randn(50, 300, 128)
    lengths = torch.randint(1, 301, (50,), device=DEVICE)
    queries = randn(4, 16, 128)
    mf.maxsim(q, d, d_lengths=lengths)  # warm up: compile before capture
    mf.maxsim(queries, d)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        out = mf.maxsim(q, d, d_lengths=lengths)  # validate=True: skipped while capturing
        out_many = mf.maxsim(queries, d)
    torch.cuda.current_stream().wait_stream(stream)
    for _ in range(2):  # new data in the same buffers, then replay
        q.copy_(randn(32, 128))
        d.copy_(randn(50, 300, 128))
        lengths.copy_(torch.randint(1, 301, (50,), device=DEVICE))
        graph.replay()
        torch.cuda.synchronize()
        assert_scores(out, maxsim_reference(q, d, d_lengths=lengths), 1e-5, "graph replay")
        assert_scores(out_many, maxsim_reference(queries, d), 1e-5, "graph replay, 4 queries")


def test_a_variant_that_fails_to_launch_falls_back_to_torch_once(monkeypatch, caplog):
    from maxsim_forge.runtime import _api

    q, d = randn(16, 64), randn(3, 20, 64)
    real_new_route = _api._new_route

    def broken_route(*args, **kwargs):
        route = real_new_route(*args, **kwargs)

        def launch(*a, **k):
            raise RuntimeError("forced: no kernel image for this device")

        route.launch = launch
        return route

    monkeypatch.setattr(_api, "_new_route", broken_route)
    with caplog.at_level(logging.WARNING, logger="maxsim_forge"):
        for _ in range(3):
            out = mf.maxsim(q, d)
    assert_scores(out, maxsim_reference(q, d), 1e-5, "fallback")
    assert mf.explain(q, d).source == "torch-fallback"
    assert sum("using torch for this bucket" in r.getMessage() for r in caplog.records) == 1


def _background_routes(monkeypatch, precompile):
    """Routes that compile in the background with ``precompile`` and count their launches."""
    from maxsim_forge.runtime import _api

    real_new_route = _api._new_route
    launches = []

    def new_route(*args, **kwargs):
        route = real_new_route(*args, **kwargs)
        real_launch = route.launch

        def launch(*a, **k):
            launches.append(1)
            return real_launch(*a, **k)

        route.launch, route.precompile, route.background = launch, precompile, True
        return route

    monkeypatch.setattr(_api, "_new_route", new_route)
    return launches


def test_background_compile_serves_calls_with_torch_until_the_kernel_is_ready(monkeypatch):
    release, started = threading.Event(), threading.Event()

    def precompile(*args, **kwargs):
        started.set()
        assert release.wait(30), "test never released the compile"

    launches = _background_routes(monkeypatch, precompile)
    q, d = randn(16, 64), randn(5, 20, 64)
    lengths = torch.tensor([20, 0, 3, 19, 1], device=DEVICE)
    ref = maxsim_reference(q, d, d_lengths=lengths)
    for _ in range(3):  # compiling: torch scores these
        assert_scores(mf.maxsim(q, d, d_lengths=lengths), ref, 1e-5, "while compiling")
    assert started.wait(30) and launches == []
    release.set()
    from maxsim_forge.runtime import _api

    for route in _api._routes.values():
        route.pending.result(timeout=30)
    assert_scores(mf.maxsim(q, d, d_lengths=lengths), ref, 1e-5, "after the compile")
    assert launches == [1]
    assert "torch" not in mf.explain(q, d, d_lengths=lengths).variant


def test_a_background_compile_that_fails_falls_back_to_torch_once(monkeypatch, caplog):
    def precompile(*args, **kwargs):
        raise RuntimeError("forced: ptxas failed")

    launches = _background_routes(monkeypatch, precompile)
    q, d = randn(8, 32), randn(3, 9, 32)
    with caplog.at_level(logging.WARNING, logger="maxsim_forge"):
        outs = [mf.maxsim(q, d) for _ in range(4)]
        from maxsim_forge.runtime import _api

        for route in _api._routes.values():
            assert route.pending is None or route.pending.exception(timeout=30) is not None
        outs += [mf.maxsim(q, d) for _ in range(2)]
    for out in outs:
        assert_scores(out, maxsim_reference(q, d), 1e-5, "fallback")
    assert launches == []
    assert mf.explain(q, d).source == "torch-fallback"
    assert sum("using torch for this bucket" in r.getMessage() for r in caplog.records) == 1


def test_blocking_calls_wait_for_the_background_compile(monkeypatch):
    done = []

    def precompile(*args, **kwargs):
        time.sleep(0.2)
        done.append(1)

    launches = _background_routes(monkeypatch, precompile)
    q, d = randn(8, 32), randn(3, 9, 32)
    mf.maxsim(q, d)  # starts the compile
    assert done == [] and launches == []
    mf.warmup([{"layout": "padded", "dtype": "fp16", "dim": 32, "lq": 8, "ld": 9, "nb": 3}], device=DEVICE)
    assert done == [1] and launches == [1]


def test_a_variant_compiled_before_answers_its_first_call_from_the_cache(monkeypatch, tmp_path):
    """A process that finds the compile mark an earlier one left (same variant, same
    specialisation, same Triton cache folder) loads the kernel on its first call instead of
    scoring it with torch; any other call still compiles in the background."""
    from _helpers import compiled_here

    from maxsim_forge.runtime import _api

    compiled_here(monkeypatch, tmp_path)  # as on a GPU: compiled kernels, Triton's cache entries
    compiles, release = [], threading.Event()

    def precompile(*args, **kwargs):
        assert release.wait(30), "test never released the compile"
        compiles.append(1)

    launches = _background_routes(monkeypatch, precompile)
    q, d = randn(8, 32), randn(3, 9, 32)
    ref = maxsim_reference(q, d)
    assert_scores(mf.maxsim(q, d), ref, 1e-5, "first process, first call")  # torch, compile started
    release.set()
    for route in _api._routes.values():
        route.pending.result(timeout=30)
    assert launches == [] and compiles == [1]
    assert_scores(mf.maxsim(q, d), ref, 1e-5, "first process, kernel")
    assert launches == [1] and len(list((tmp_path / "kernels" / "compiled").iterdir())) == 1
    _api.reset()  # a new process, as far as routes go
    assert_scores(mf.maxsim(q, d), ref, 1e-5, "second process, first call")
    assert launches == [1, 1] and compiles == [1]  # the kernel answered; no background compile
    assert all(route.pending is None and route.warm for route in _api._routes.values())
    _api.reset()
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "emptied"))  # Triton's cache gone: compile again
    mf.maxsim(q, d)
    assert launches == [1, 1] and any(route.pending is not None for route in _api._routes.values())


def test_a_warm_route_compiles_another_specialisation_in_the_background(monkeypatch):
    """A warm route whose call falls in a specialisation its kernel was not compiled for
    (here: a doc count divisible by 16) is scored by torch while that compile runs on the
    compile thread, then by the kernel; the compiled specialisation never waits."""
    from maxsim_forge.codegen import DEFER, CompileNeeded
    from maxsim_forge.runtime import _api

    release = threading.Event()
    compiled, launches = set(), []

    def precompile(q, d, **kwargs):
        if d.shape[0] % 16 == 0:
            assert release.wait(30), "test never released the compile"
        compiled.add(d.shape[0] % 16 == 0)

    real_new_route = _api._new_route

    def new_route(*args, **kwargs):
        route = real_new_route(*args, **kwargs)
        real_launch = route.launch

        def launch(q, d, **k):  # as a variant's deferrable launchers do
            kind = d.shape[0] % 16 == 0
            if kind not in compiled:
                if DEFER.on:
                    raise CompileNeeded(kind)
                compiled.add(kind)
            launches.append(d.shape[0])
            return real_launch(q, d, **k)

        route.launch, route.precompile, route.background = launch, precompile, True
        return route

    monkeypatch.setattr(_api, "_new_route", new_route)
    q, d9, d16 = randn(8, 32), randn(9, 11, 32), randn(16, 11, 32)
    ref9, ref16 = maxsim_reference(q, d9), maxsim_reference(q, d16)
    assert_scores(mf.maxsim(q, d9), ref9, 1e-5, "cold")  # torch (or the kernel, if compiled already)
    (route,) = _api._routes.values()
    if route.pending is not None:
        route.pending.result(timeout=30)
    assert_scores(mf.maxsim(q, d9), ref9, 1e-5, "warm")
    assert launches[-1] == 9 and route.warm
    done = len(launches)
    for _ in range(2):  # 16 docs, same bucket, another class: torch while it compiles
        assert_scores(mf.maxsim(q, d16), ref16, 1e-5, "another specialisation, compiling")
    assert len(launches) == done and len(route.later) == 1
    assert_scores(mf.maxsim(q, d9), ref9, 1e-5, "the compiled class meanwhile")
    assert launches[done:] == [9]
    release.set()
    next(iter(route.later.values())).result(timeout=30)
    assert_scores(mf.maxsim(q, d16), ref16, 1e-5, "another specialisation, compiled")
    assert launches[done:] == [9, 16] and not DEFER.on


def test_a_failed_background_compile_of_another_specialisation_compiles_in_place_after(monkeypatch, caplog):
    from maxsim_forge.codegen import DEFER, CompileNeeded
    from maxsim_forge.runtime import _api

    compiled, launches, release = {False}, [], threading.Event()

    def precompile(q, d, **kwargs):
        assert release.wait(30), "test never released the compile"  # fails only after the call returned
        raise RuntimeError("forced: ptxas failed for this specialisation")

    real_new_route = _api._new_route

    def new_route(*args, **kwargs):
        route = real_new_route(*args, **kwargs)
        real_launch = route.launch

        def launch(q, d, **k):
            kind = d.shape[0] % 16 == 0
            if kind not in compiled:
                if DEFER.on:
                    raise CompileNeeded(kind)
                compiled.add(kind)  # in place, on the calling thread
            launches.append(d.shape[0])
            return real_launch(q, d, **k)

        route.launch, route.precompile, route.background, route.warm = launch, precompile, True, True
        return route

    monkeypatch.setattr(_api, "_new_route", new_route)
    q, d9, d16 = randn(8, 32), randn(9, 11, 32), randn(16, 11, 32)
    assert_scores(mf.maxsim(q, d9), maxsim_reference(q, d9), 1e-5, "warm")
    (route,) = _api._routes.values()
    assert_scores(mf.maxsim(q, d16), maxsim_reference(q, d16), 1e-5, "torch while compiling")
    assert launches == [9]
    release.set()
    with caplog.at_level(logging.WARNING, logger="maxsim_forge"):
        assert next(iter(route.later.values())).exception(timeout=30) is not None
        for _ in range(300):  # the warning comes from the compile thread's done-callback
            if any("failed to compile for another specialisation" in r.getMessage() for r in caplog.records):
                break
            time.sleep(0.01)
    assert any("ptxas failed" in r.getMessage() for r in caplog.records)
    assert_scores(mf.maxsim(q, d16), maxsim_reference(q, d16), 1e-5, "in place after the failure")
    assert launches == [9, 16] and len(route.later) == 1  # kept: its calls compile in place, as before


@pytest.mark.skipif(DEVICE != "cuda", reason="compiled launchers need a GPU (the interpreter never misses)")
def test_compiled_launchers_defer_another_specialisation_after_warmup(monkeypatch):
    """On a GPU, for real: after warmup (4 docs), 48 docs (a multiple of 16) meet an
    uncompiled specialisation; in background mode torch scores that call while the
    compile thread builds it, then the kernel launches directly."""
    from maxsim_forge._inputs import prepare_padded
    from maxsim_forge.runtime import _api

    monkeypatch.setenv("MAXSIM_FORGE_COMPILE", "background")  # read by each new route
    lq, ld = 7, 37
    mf.warmup([{"layout": "padded", "dtype": "fp16", "dim": 64, "lq": lq, "ld": ld, "nb": 48}])
    (route,) = _api._routes.values()
    assert route.warm and route.background
    q, d = randn(lq, 64), randn(48, ld, 64)
    prep = prepare_padded(q, d)

    def fwd_compiled() -> bool:
        return route.kernel.compiled_kernels(prep.q, prep.d, **prep.launch_kwargs)[1][0] is not None

    if fwd_compiled():
        pytest.skip("this process compiled that specialisation already")
    before = route.kernel.fwd.direct_launches
    ref = maxsim_reference(q, d)
    for _ in range(2):  # the second by the remembered fast path: it must not compile in place either
        assert_scores(mf.maxsim(q, d), ref, 1e-5, "torch while compiling")
        (pending,) = route.later.values()
        if not pending.done():
            assert not fwd_compiled()
    assert len(_api._routes) == 1 and route.kernel.fwd.direct_launches == before
    pending.result(timeout=120)
    assert fwd_compiled()
    assert_scores(mf.maxsim(q, d), ref, 1e-5, "the kernel")
    assert route.kernel.fwd.direct_launches == before + 1


def test_an_unknown_compile_mode_is_a_value_error(monkeypatch):
    monkeypatch.setenv("MAXSIM_FORGE_COMPILE", "eventually")
    with pytest.raises(ValueError, match="MAXSIM_FORGE_COMPILE='eventually' is not supported"):
        mf.maxsim(randn(4, 8), randn(2, 5, 8))


def test_non_tensor_arguments_raise_type_errors():
    q, d = randn(4, 8), randn(2, 5, 8)
    with pytest.raises(TypeError, match="d_lengths must be a torch.Tensor, got list"):
        mf.maxsim(q, d, d_lengths=[5, 5])
    with pytest.raises(TypeError, match="q must be a torch.Tensor, got list"):
        mf.maxsim([[1.0] * 8], d)
    with pytest.raises(ValueError, match="precision="):
        mf.maxsim(q, d, precision=["tf32"])


def test_pairs_already_packed_on_the_device():
    from maxsim_forge.runtime import maxsim_pairs_packed

    q_lens, d_lens = [3, 0, 17], [5, 9, 1]
    queries = [randn(n, 48) for n in q_lens]
    docs = [randn(n, 48) for n in d_lens]
    q_cu = torch.tensor([0, 3, 3, 20], dtype=torch.int32, device=DEVICE)
    d_cu = torch.tensor([0, 5, 14, 15], dtype=torch.int32, device=DEVICE)
    out = maxsim_pairs_packed(torch.cat(queries), q_cu, torch.cat(docs), d_cu, max_q_len=17, max_d_len=9)
    assert_scores(out, maxsim_pairs_reference(queries, docs), 1e-5, "pairs packed")
    with pytest.raises(ValueError, match="d_cu decreases at index 2"):
        bad = torch.tensor([0, 9, 5, 15], dtype=torch.int32, device=DEVICE)
        maxsim_pairs_packed(torch.cat(queries), q_cu, torch.cat(docs), bad, max_q_len=17)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_tensors_on_another_gpu_than_the_current_one():
    q = torch.randn(16, 64, device="cuda:1").half()
    d = torch.randn(5, 40, 64, device="cuda:1").half()
    assert torch.cuda.current_device() == 0
    for _ in range(2):  # the checked path, then the fast path
        out = mf.maxsim(q, d)
        assert out.device == q.device
        assert_scores(out, maxsim_reference(q, d), 1e-5, "cuda:1")
