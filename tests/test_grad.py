"""Gradients through every scoring call (maxsim_forge/runtime/_grad.py): float64
gradcheck on the torch path, fp16/bf16/fp32 gradients of the kernels' calls against a
float64 autograd reference, ties, masks, empty docs, and a short training loop."""

from __future__ import annotations

import pytest
import torch

import maxsim_forge as mf
from maxsim_forge.reference import maxsim_packed_reference, maxsim_pairs_reference, maxsim_reference
from maxsim_forge.runtime import maxsim_pairs_packed

from conftest import DEVICE, DTYPES, randn

# Gradients are sums of products of inputs in the inputs' dtype, summed in fp32: against
# float64, relative to the largest gradient entry.
_TOL = {"fp16": 2e-3, "bf16": 1e-2, "fp32": 1e-5}


def _leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone().requires_grad_()


def _close(got: torch.Tensor | None, want: torch.Tensor | None, tol: float, what: str) -> None:
    want = torch.zeros_like(got, dtype=torch.float64) if want is None else want
    scale = max(float(want.abs().max()), 1e-30) if want.numel() else 1.0
    err = float((got.double() - want).abs().max()) / scale if want.numel() else 0.0
    assert err <= tol, f"{what}: max relative error {err:.2e} > {tol:.0e}"


@pytest.mark.parametrize("sides", ("plain", "lengths", "masks"))
@pytest.mark.parametrize("nq", (1, 3))
def test_gradcheck_in_float64(sides, nq):
    """float64 takes the torch path: its gradients, checked by finite differences."""
    q = torch.randn(nq, 4, 8, dtype=torch.float64, device=DEVICE) if nq > 1 else \
        torch.randn(4, 8, dtype=torch.float64, device=DEVICE)
    d = torch.randn(3, 5, 8, dtype=torch.float64, device=DEVICE)
    kw = {}
    if sides == "lengths":
        kw = {"d_lengths": torch.tensor([5, 0, 2], device=DEVICE)}
    elif sides == "masks":
        kw = {"d_mask": torch.rand(3, 5, device=DEVICE) > 0.4,
              "q_mask": (torch.rand(nq, 4, device=DEVICE) > 0.3) if nq > 1 else torch.rand(4, device=DEVICE) > 0.3}
    assert torch.autograd.gradcheck(lambda a, b: mf.maxsim(a, b, **kw), (_leaf(q), _leaf(d)))


def test_gradcheck_packed_and_pairs_in_float64():
    q = torch.randn(2, 3, 8, dtype=torch.float64, device=DEVICE)
    dp = torch.randn(9, 8, dtype=torch.float64, device=DEVICE)
    cu = torch.tensor([0, 4, 4, 9], dtype=torch.int32, device=DEVICE)
    assert torch.autograd.gradcheck(lambda a, b: mf.maxsim_packed(a, b, cu), (_leaf(q), _leaf(dp)))
    qp = torch.randn(6, 8, dtype=torch.float64, device=DEVICE)
    q_cu = torch.tensor([0, 2, 6], dtype=torch.int32, device=DEVICE)
    d_cu = torch.tensor([0, 5, 9], dtype=torch.int32, device=DEVICE)
    assert torch.autograd.gradcheck(
        lambda a, b: maxsim_pairs_packed(a, q_cu, b, d_cu, max_q_len=4, max_d_len=5), (_leaf(qp), _leaf(dp)))


@pytest.mark.parametrize("dtype", ("fp16", "bf16", "fp32"))
@pytest.mark.parametrize("nq, sides", [(1, "plain"), (1, "lengths"), (3, "masks"), (2, "qlengths")])
def test_padded_gradients_match_float64_autograd(isolated_lookup, dtype, nq, sides):
    dt = DTYPES[dtype]
    q = randn(nq, 7, 40, dtype=dt) if nq > 1 else randn(7, 40, dtype=dt)
    d = randn(5, 13, 40, dtype=dt)
    kw: dict = {}
    if sides == "lengths":
        kw["d_lengths"] = torch.tensor([13, 0, 4, 9, 1], device=DEVICE)
    elif sides == "masks":
        kw["d_mask"] = torch.rand(5, 13, device=DEVICE) > 0.3
        kw["q_mask"] = torch.rand(nq, 7, device=DEVICE) > 0.2
    elif sides == "qlengths":
        kw["q_lengths"] = torch.tensor([7, 3], device=DEVICE)
    precision = "ieee" if dtype == "fp32" else "tf32"
    ql, dl = _leaf(q), _leaf(d)
    out = mf.maxsim(ql, dl, precision=precision, **kw)
    assert out.dtype == torch.float32 and out.requires_grad
    g = torch.randn(out.shape, device=DEVICE)
    out.backward(g)
    q64, d64 = _leaf(q.double()), _leaf(d.double())
    ref = maxsim_reference(q64, d64, **kw)
    ref.backward(g.double())
    _close(out.detach(), ref.detach(), 1e-5 if dtype == "fp32" else 2e-3, f"scores {dtype} {sides}")
    assert ql.grad.dtype == dt and dl.grad.dtype == dt
    _close(ql.grad, q64.grad, _TOL[dtype], f"dq {dtype} {sides}")
    _close(dl.grad, d64.grad, _TOL[dtype], f"dd {dtype} {sides}")
    if sides == "lengths":
        assert dl.grad[1].abs().max() == 0 and dl.grad[2, 4:].abs().max() == 0  # empty doc, padding
    if sides == "masks":
        assert dl.grad[~kw["d_mask"]].abs().max() == 0  # a masked token never wins


@pytest.mark.parametrize("nq, sides", [(1, "plain"), (3, "masks"), (2, "lengths")])
def test_a_shape_seen_before_trains_without_the_checks(isolated_lookup, monkeypatch, nq, sides):
    """A padded call with gradients whose shapes, dtypes and devices were checked before
    skips the checks (lengths are still checked where ``validate`` asks): the same spec
    and sizes, the same scores and gradients."""
    from maxsim_forge.runtime import _entry

    q = randn(nq, 7, 40, dtype=torch.bfloat16) if nq > 1 else randn(7, 40, dtype=torch.bfloat16)
    d = randn(5, 13, 40, dtype=torch.bfloat16)
    kw: dict = {}
    if sides == "masks":
        kw = {"d_mask": torch.rand(5, 13, device=DEVICE) > 0.3, "q_mask": torch.rand(nq, 7, device=DEVICE) > 0.2}
    elif sides == "lengths":
        kw = {"d_lengths": torch.tensor([13, 0, 4, 9, 1], device=DEVICE),
              "q_lengths": torch.tensor([7, 3], device=DEVICE)}
    g = torch.randn(5, device=DEVICE) if nq == 1 else torch.randn(nq, 5, device=DEVICE)
    runs = []
    for again in (False, True):
        if again:
            monkeypatch.setattr(_entry, "prepare_padded", lambda *a, **k: pytest.fail("checked again"))
        ql, dl = _leaf(q), _leaf(d)
        out = mf.maxsim(ql, dl, validate=False, **kw)
        out.backward(g)
        runs.append((out.detach(), ql.grad, dl.grad))
    for a, b, what in zip(*runs, ("scores", "dq", "dd")):
        assert a.shape == b.shape and torch.equal(a, b), what
    if sides == "lengths":  # validate=True reads the lengths back: the checked path again
        with pytest.raises(pytest.fail.Exception, match="checked again"):
            mf.maxsim(_leaf(q), _leaf(d), **kw)
    q64, d64 = _leaf(q.double()), _leaf(d.double())
    maxsim_reference(q64, d64, **kw).backward(g.double())
    _close(runs[1][1], q64.grad, _TOL["bf16"], "dq, unchecked")
    _close(runs[1][2], d64.grad, _TOL["bf16"], "dd, unchecked")


def test_a_one_query_call_with_a_two_dimensional_mask_trains_twice(isolated_lookup):
    """A 2-D query's mask may be [Lq] or [1, Lq]; the remembered shape keeps either."""
    q, d = randn(7, 32, dtype=torch.float32), randn(4, 9, 32, dtype=torch.float32)
    for q_mask in (torch.rand(1, 7, device=DEVICE) > 0.3, torch.rand(7, device=DEVICE) > 0.3):
        q_mask[..., 0] = True
        for _ in range(2):
            ql, dl = _leaf(q), _leaf(d)
            out = mf.maxsim(ql, dl, q_mask=q_mask, precision="ieee")
            out.sum().backward()
            q64, d64 = _leaf(q.double()), _leaf(d.double())
            ref = maxsim_reference(q64, d64, q_mask=q_mask)
            ref.sum().backward()
            assert out.shape == (4,)
            _close(out.detach(), ref.detach(), 1e-5, f"scores, mask {tuple(q_mask.shape)}")
            _close(ql.grad, q64.grad, 1e-5, f"dq, mask {tuple(q_mask.shape)}")


def test_training_from_several_threads_keeps_the_kernels(isolated_lookup, caplog):
    """Threads training and scoring at once: each launch on its own turn (the interpreter)
    or device, no kernel given up for torch, every result right."""
    import threading

    q, d = randn(2, 5, 32, dtype=torch.float32), randn(3, 11, 32, dtype=torch.float32)
    q64, d64 = _leaf(q.double()), _leaf(d.double())
    ref = maxsim_reference(q64, d64)
    ref.sum().backward()
    errors: list = []

    def work(train: bool) -> None:
        try:
            for _ in range(3):
                ql, dl = _leaf(q), _leaf(d)
                if train:
                    out = mf.maxsim(ql, dl, precision="ieee")
                    out.sum().backward()
                    _close(dl.grad, d64.grad, 1e-5, "dd from a thread")
                else:
                    with torch.no_grad():
                        out = mf.maxsim(ql, dl, precision="ieee")
                _close(out.detach(), ref.detach(), 1e-5, "scores from a thread")
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in (True, True, False)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert "failed" not in caplog.text, caplog.text


def test_backward_plans_stay_bounded(isolated_lookup, monkeypatch):
    """Packed docs change their total of tokens every batch: the plans kept per call
    shape stay under the limit."""
    from maxsim_forge.runtime import _api

    monkeypatch.setattr(_api, "_PLAN_LIMIT", 3)
    q = randn(2, 4, 32, dtype=torch.float32)
    for total in range(5, 11):
        lens = [total - 5, 5]
        cu = torch.tensor([0, lens[0], total], dtype=torch.int32, device=DEVICE)
        dl = _leaf(randn(total, 32, dtype=torch.float32))
        mf.maxsim_packed(_leaf(q), dl, cu, precision="ieee").sum().backward()
        assert len(_api._lookup.backward_plans) <= 3


def test_the_forward_keeps_its_winners_for_the_backward(isolated_lookup, monkeypatch):
    """Where kernels run, a call with gradients is scored by the winners kernel, whose
    winners the backward takes instead of finding them again; a second backward of the
    same graph (retain_graph) finds them again and gives the same gradients."""
    from maxsim_forge._inputs import prepare_padded
    from maxsim_forge.runtime import _grad

    q, d = _leaf(randn(3, 9, 48, dtype=torch.float16)), _leaf(randn(6, 21, 48, dtype=torch.float16))
    if not _grad._kernels_for(prepare_padded(q.detach(), d.detach())):
        pytest.skip("no kernels here (CPU without the interpreter)")
    searches = []
    real = _grad._Plan.find_winners
    monkeypatch.setattr(_grad._Plan, "find_winners", lambda self, prep: searches.append(1) or real(self, prep))
    out = mf.maxsim(q, d)
    assert len(searches) == 1  # the forward
    g = torch.randn(3, 6, device=DEVICE)
    first = torch.autograd.grad(out, (q, d), g, retain_graph=True)
    assert len(searches) == 1  # the backward took the kept winners
    second = torch.autograd.grad(out, (q, d), g)
    assert len(searches) == 2  # they were sorted in place: found again
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    with torch.no_grad():
        plain = mf.maxsim(q, d)
    _close(out.detach(), plain.double(), 1e-6, "the winners kernel's scores against the forward kernel's")


def test_scores_with_gradients_follow_the_nan_and_inf_rules(isolated_lookup):
    """The winners kernel's scores keep the forward's rules: NaN in a valid token makes the
    scores it enters NaN, a masked token changes nothing, an empty doc scores 0, a query
    token whose every product is -inf adds 0, an inf product follows IEEE arithmetic."""
    q = randn(2, 6, 32, dtype=torch.float32)
    d = randn(5, 10, 32, dtype=torch.float32)
    q[0, 2, 5] = float("nan")  # query 0: NaN everywhere
    q[1, 5] = float("nan")  # masked below: no effect
    d[1, 3, 0] = float("nan")  # doc 1: NaN for every query
    d[2, 7] = float("nan")  # masked below
    d[3, :, :] = 0.0
    d[3, 0, 0] = float("inf")  # doc 3: products inf, -inf or NaN (inf x 0)
    q_mask = torch.ones(2, 6, dtype=torch.bool, device=DEVICE)
    q_mask[1, 5] = False
    d_lengths = torch.tensor([10, 10, 7, 10, 0], device=DEVICE)  # doc 4 empty
    with torch.no_grad():
        want = mf.maxsim(q, d, q_mask=q_mask, d_lengths=d_lengths, precision="ieee")
    got = mf.maxsim(_leaf(q), _leaf(d), q_mask=q_mask, d_lengths=d_lengths, precision="ieee").detach()
    ref = maxsim_reference(q.double(), d.double(), q_mask=q_mask, d_lengths=d_lengths)
    for name, x in (("no grad", want), ("with grad", got)):
        assert torch.equal(torch.isnan(x), torch.isnan(ref)), (name, x, ref)
        assert torch.equal(torch.isinf(x), torch.isinf(ref)) and torch.equal(x[torch.isinf(x)], ref[torch.isinf(ref)].float())
        fin = torch.isfinite(ref)
        _close(x[fin], ref[fin], 1e-6, name)
    assert bool(torch.isnan(got[0, :4]).all()) and bool(torch.isnan(got[:, 1]).all()) and bool((got[:, 4] == 0).all())


def test_packed_and_pairs_gradients_match_float64_autograd(isolated_lookup):
    q = randn(2, 5, 32, dtype=torch.float32)
    lens = [4, 0, 11, 1]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    dp = randn(sum(lens), 32, dtype=torch.float32)
    ql, dl = _leaf(q), _leaf(dp)
    out = mf.maxsim_packed(ql, dl, cu, precision="ieee")
    g = torch.randn(out.shape, device=DEVICE)
    out.backward(g)
    q64, d64 = _leaf(q.double()), _leaf(dp.double())
    ref = maxsim_packed_reference(q64, d64, cu)
    ref.backward(g.double())
    _close(out.detach(), ref.detach(), 1e-5, "packed scores")
    _close(ql.grad, q64.grad, 1e-5, "packed dq")
    _close(dl.grad, d64.grad, 1e-5, "packed dd")

    queries = [_leaf(randn(n, 32, dtype=torch.float32)) for n in (3, 1, 6)]
    docs = [_leaf(randn(n, 32, dtype=torch.float32)) for n in (5, 2, 0)]
    out = mf.maxsim_pairs(queries, docs, precision="ieee")
    g = torch.randn(out.shape, device=DEVICE)
    out.backward(g)
    q64 = [_leaf(x.double()) for x in queries]
    d64 = [_leaf(x.double()) for x in docs]
    maxsim_pairs_reference(q64, d64).backward(g.double())
    for mine, ref, what in [*zip(queries, q64, ("q0", "q1", "q2")), *zip(docs[:2], d64[:2], ("d0", "d1"))]:
        _close(mine.grad, ref.grad, 1e-5, f"pairs {what}")
    assert queries[2].grad.abs().max() == 0  # its doc is empty: it scores 0 whatever the query


def test_ties_go_to_the_lowest_index_and_only_the_needed_gradient_is_made(isolated_lookup):
    q = torch.ones(1, 4, device=DEVICE)
    d = torch.zeros(1, 3, 4, device=DEVICE)
    d[0, 1] = 1.0
    d[0, 2] = 1.0  # tokens 1 and 2 tie
    dl = _leaf(d)
    mf.maxsim(q, dl, precision="ieee").sum().backward()
    assert dl.grad[0, 1].tolist() == [1.0] * 4 and dl.grad[0, 2].abs().max() == 0
    ql = _leaf(q)
    out = mf.maxsim(ql, d, precision="ieee")
    (dq,) = torch.autograd.grad(out.sum(), ql)
    assert dq.tolist() == [[1.0] * 4]


def test_no_grad_and_quantized_docs():
    q = _leaf(randn(4, 32, dtype=torch.float32))
    with torch.no_grad():
        assert mf.maxsim(q, randn(2, 5, 32, dtype=torch.float32)).grad_fn is None
    with pytest.raises(ValueError, match="gradients through quantized docs are not supported"):
        mf.maxsim(q, mf.quantize(randn(2, 5, 32), "int8"))
    with pytest.raises(ValueError, match="gradients through quantized docs are not supported"):
        mf.maxsim_pairs([q], [mf.quantize(randn(5, 32), "int8")])
    # Float docs with quantize_query: the docs are what is wrong, with or without gradients.
    with pytest.raises(ValueError, match="docs must be QuantizedDocs"):
        mf.maxsim_pairs([q], [randn(5, 32, dtype=torch.float32)], quantize_query=True)


def test_a_contrastive_loss_falls_as_with_the_torch_reference(isolated_lookup):
    """A hundred and twenty steps of in-batch contrastive training of random embeddings: the loss
    falls, and step by step as it does through the float64 reference's autograd."""
    torch.manual_seed(0)
    nq, nd, lq, ld, dim = 4, 4, 4, 6, 16
    q0, d0 = torch.randn(nq, lq, dim), torch.randn(nd, ld, dim)
    losses = {}
    for name in ("forge", "reference"):
        q = torch.nn.Parameter(q0.clone().to(DEVICE))
        d = torch.nn.Parameter(d0.clone().to(DEVICE))
        opt = torch.optim.SGD([q, d], lr=0.1)
        seen = []
        for _ in range(120):
            opt.zero_grad()
            if name == "forge":
                scores = mf.maxsim(q, d, precision="ieee").double()
            else:
                scores = maxsim_reference(q.double(), d.double())
            loss = torch.nn.functional.cross_entropy(scores, torch.arange(nq, device=DEVICE))
            loss.backward()
            opt.step()
            seen.append(float(loss))
        losses[name] = seen
    forge, ref = losses["forge"], losses["reference"]
    assert forge[-1] < 0.5 * forge[0]
    assert max(abs(a - b) for a, b in zip(forge, ref)) < 1e-3 * max(ref)


@pytest.mark.parametrize("dtype", ("fp16", "bf16", "fp32"))
@pytest.mark.parametrize("layout, q_mask, d_mask", [("padded", "none", "lengths"), ("allpairs", "lengths", "mask"),
                                                     ("allpairs", "mask", "none"), ("packed", "lengths", "none"),
                                                     ("pairs", "none", "none")])
def test_winners_kernel_agrees_with_torch(dtype, layout, q_mask, d_mask):
    """The backward's kernel path (winners from the generated kernel) against its torch
    path, on the same checked call: the same winners, the same gradients."""
    from maxsim_forge._keys import Sizes
    from maxsim_forge._problems import synth
    from maxsim_forge.codegen import KernelSpec
    from maxsim_forge.runtime._grad import _torch_backward, grads_from_winners, winners

    spec = KernelSpec(layout, dtype, 48, "ieee", q_mask, d_mask)
    nq = 3 if layout in ("allpairs", "packed") else 1
    prep = synth(spec, Sizes(nq=nq, lq=9, nb=5, ld=21), device=DEVICE, seed=7).prep
    grad = torch.randn(prep.launch_kwargs["nb"] if layout == "pairs" else (prep.launch_kwargs["nq"],
                                                                          prep.launch_kwargs["nb"]), device=DEVICE)
    idx = winners(prep)
    assert idx.dtype == torch.int32
    kq, kd = grads_from_winners(prep, idx, grad, True, True)
    tq, td = _torch_backward(prep, grad, True, True)
    tol = _TOL[dtype]
    _close(kq, tq.double(), tol, f"{layout} dq")
    _close(kd, td.double(), tol, f"{layout} dd")


@pytest.mark.parametrize("dtype, layout, dim, lq, ld, nq", [
    ("fp16", "allpairs", 200, 70, 150, 2),   # two feature tiles, two query-token tiles, three doc-token tiles
    ("bf16", "padded", 40, 9, 70, 1),
    ("fp32", "packed", 96, 17, 0, 3),
    ("fp16", "packed", 16, 1, 0, 2),
])
def test_gradient_kernels_cross_every_tile_edge(dtype, layout, dim, lq, ld, nq):
    """The dq and dd kernels at sizes off every tile's edge, packed docs with and without
    their longest length given, against the torch backward of the same winners."""
    from maxsim_forge._inputs import prepare_packed
    from maxsim_forge.codegen import grads_meta
    from maxsim_forge.runtime._grad import _torch_backward, grads_from_winners, winners

    dt = DTYPES[dtype]
    q = randn(nq, lq, dim, dtype=dt) if layout != "padded" else randn(lq, dim, dtype=dt)
    precision = "ieee" if dtype == "fp32" else "tf32"
    if layout == "packed":
        lens = [0, 130, 1, 64, 65]
        cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
        d = randn(sum(lens), dim, dtype=dt)
        preps = [prepare_packed(q, d, cu, precision=precision, max_doc_len=m) for m in (None, 130)]
    else:
        from maxsim_forge._inputs import prepare_padded
        d = randn(4, ld, dim, dtype=dt)
        preps = [prepare_padded(q, d, d_lengths=torch.tensor([ld, 0, 3, ld - 1], device=DEVICE), precision=precision)]
    dq_meta, dd_meta = grads_meta(preps[0].spec, rows=preps[0].launch_kwargs["nq"] * lq)
    assert dim > dq_meta["BLOCK_K"] or layout != "allpairs"  # the first case crosses feature tiles
    for prep in preps:
        grad = torch.randn(prep.launch_kwargs["nq"], prep.launch_kwargs["nb"], device=DEVICE)
        kq, kd = grads_from_winners(prep, winners(prep), grad, True, True)
        tq, td = _torch_backward(prep, grad, True, True)
        assert kq.dtype == dt and kd.dtype == dt and kq.shape == prep.q.shape and kd.shape == prep.d.shape
        _close(kq, tq.double(), _TOL[dtype], f"{layout} dq")
        _close(kd, td.double(), _TOL[dtype], f"{layout} dd")


def test_gradient_kernels_keep_non_finite_values_where_they_belong(isolated_lookup):
    """An inf score gradient of a doc reaches only the tokens that won in it (a token no
    query token won gets 0, not inf x 0), a NaN in a masked query token stays out, and an
    inf in a valid query token reaches only the doc token it won."""
    q = _leaf(randn(2, 6, 32, dtype=torch.float16))
    d = _leaf(randn(3, 40, 32, dtype=torch.float16))
    q_mask = torch.ones(2, 6, dtype=torch.bool, device=DEVICE)
    q_mask[1, 5] = False
    with torch.no_grad():
        q[1, 5] = float("nan")
        q[1, 0, 3] = float("inf")
    out = mf.maxsim(q, d, q_mask=q_mask)
    g = torch.ones(2, 3, device=DEVICE)
    g[0, 1] = float("inf")
    dq, dd = torch.autograd.grad(out, (q, d), g)
    q64, d64 = _leaf(q.detach().double()), _leaf(d.detach().double())
    # float64 takes the torch backward, which follows the winners by gathers and a scatter.
    rq, rd = torch.autograd.grad(mf.maxsim(q64, d64, q_mask=q_mask), (q64, d64), g.double())
    assert torch.equal(torch.isfinite(dd), torch.isfinite(rd)) and torch.equal(torch.isfinite(dq), torch.isfinite(rq))
    assert torch.equal(torch.isnan(dd), torch.isnan(rd))  # inf - inf where a token's winners differ in sign
    fin = torch.isfinite(rd)
    _close(dd[fin], rd[fin], _TOL["fp16"], "finite dd")
    assert bool((dq[1, 5] == 0).all())


def test_the_backward_is_the_same_bits_on_every_run(isolated_lookup):
    """Many query tokens winning the same doc tokens (sums in the dd kernel): two backwards
    of the same call give identical bits, with and without torch's deterministic mode."""
    # Many programs adding at once on a GPU; through the interpreter, a small call (it runs
    # one program at a time) that still sums many winners per doc token.
    nq, lq, nb, ld, dim = (8, 32, 24, 50, 64) if DEVICE == "cuda" else (3, 16, 4, 20, 32)
    q = randn(nq, lq, dim, dtype=torch.bfloat16)
    d = randn(nb, ld, dim, dtype=torch.bfloat16)
    d[:, 7] = 4 * q.float().mean(dim=(0, 1)).to(torch.bfloat16)  # a token most query tokens pick
    g = torch.randn(nq, nb, device=DEVICE)
    was = torch.are_deterministic_algorithms_enabled()
    try:
        for mode in (False, True):
            torch.use_deterministic_algorithms(mode)
            runs = []
            for _ in range(3 if DEVICE == "cuda" else 2):
                ql, dl = _leaf(q), _leaf(d)
                mf.maxsim(ql, dl).backward(g)
                runs.append((ql.grad, dl.grad))
            for dq, dd in runs[1:]:
                assert torch.equal(dq, runs[0][0]) and torch.equal(dd, runs[0][1]), f"deterministic mode {mode}"
    finally:
        torch.use_deterministic_algorithms(was)


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need a CUDA GPU")
def test_forward_and_backward_replay_in_a_cuda_graph(isolated_lookup):
    """A training step's scoring (forward and backward) captured in a CUDA graph, replayed
    on new inputs copied into the captured tensors, equals the eager step."""
    q = _leaf(randn(16, 32, 128, dtype=torch.bfloat16))
    d = _leaf(randn(64, 180, 128, dtype=torch.bfloat16))
    labels = torch.arange(16, device=DEVICE) * 4

    def step():
        q.grad = d.grad = None
        loss = torch.nn.functional.cross_entropy(mf.maxsim(q, d) / 0.05, labels)
        loss.backward()
        return loss

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # compiles the kernels and decides the configs before the capture
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    q.grad = d.grad = None
    with torch.cuda.graph(graph):
        loss = torch.nn.functional.cross_entropy(mf.maxsim(q, d) / 0.05, labels)
        loss.backward()
    captured = (loss, q.grad, d.grad)
    from maxsim_forge.codegen._launcher import _cached

    assert sum(launcher.direct_launches for launcher in _cached.values()) > 0  # no per-call Triton dispatch
    for _ in range(2):
        new_q, new_d = randn(16, 32, 128, dtype=torch.bfloat16), randn(64, 180, 128, dtype=torch.bfloat16)
        with torch.no_grad():
            q.copy_(new_q)
            d.copy_(new_d)
        graph.replay()
        torch.cuda.synchronize()
        want = step()
        assert torch.equal(captured[0], want.detach())
        assert torch.equal(captured[1], q.grad) and torch.equal(captured[2], d.grad)


def test_a_failing_winners_kernel_falls_back_to_torch_once(isolated_lookup, monkeypatch, caplog):
    from maxsim_forge.runtime import _grad

    from maxsim_forge._inputs import prepare_padded

    if not _grad._kernels_for(prepare_padded(randn(4, 32), randn(2, 5, 32))):
        pytest.skip("no kernels here (CPU without the interpreter)")

    def broken(*a, **k):
        raise RuntimeError("no such kernel here")

    monkeypatch.setattr(_grad, "winners_launcher", broken)
    _grad._failed.clear()
    q, d = _leaf(randn(4, 32, dtype=torch.float32)), _leaf(randn(2, 5, 32, dtype=torch.float32))
    for _ in range(2):
        mf.maxsim(q, d, precision="ieee").sum().backward()
    assert caplog.text.count("the backward's kernels of") == 1
    assert caplog.text.count("failed in the forward") == 1
    q64, d64 = _leaf(q.detach().double()), _leaf(d.detach().double())
    (2 * maxsim_reference(q64, d64)).sum().backward()
    _close(q.grad, q64.grad, 1e-5, "dq after the fallback")


def test_edges_of_the_backward(isolated_lookup):
    # A packed batch whose last doc is empty (it starts where the tokens end).
    q = _leaf(randn(2, 3, 16, dtype=torch.float32))
    dp = _leaf(randn(6, 16, dtype=torch.float32))
    cu = torch.tensor([0, 4, 6, 6], dtype=torch.int32, device=DEVICE)
    out = mf.maxsim_packed(q, dp, cu, precision="ieee")
    out.sum().backward()
    q64, d64 = _leaf(q.detach().double()), _leaf(dp.detach().double())
    maxsim_packed_reference(q64, d64, cu).sum().backward()
    _close(q.grad, q64.grad, 1e-5, "dq, trailing empty doc")
    _close(dp.grad, d64.grad, 1e-5, "dd, trailing empty doc")
    # An inf gradient of a score that gets none (an empty doc) stays out of the others.
    d = randn(3, 5, 16, dtype=torch.float32)
    ql = _leaf(randn(4, 16, dtype=torch.float32))
    out = mf.maxsim(ql, d, d_lengths=torch.tensor([5, 0, 2], device=DEVICE), precision="ieee")
    (dq,) = torch.autograd.grad(out, ql, torch.tensor([1.0, float("inf"), 1.0], device=DEVICE))
    assert bool(torch.isfinite(dq).all())
    # A second derivative is refused, never silently wrong.
    ql = _leaf(randn(4, 16, dtype=torch.float32))
    (dq,) = torch.autograd.grad(mf.maxsim(ql, d, precision="ieee").sum(), ql, create_graph=True)
    with pytest.raises(RuntimeError, match="does not require grad|differentiable"):
        torch.autograd.grad((dq ** 2).sum(), ql)
    # An input changed in place between the forward and the backward is caught.
    ql = _leaf(randn(4, 16, dtype=torch.float32))
    x = ql * 1
    out = mf.maxsim(x, d, precision="ieee")
    x.mul_(-1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()
